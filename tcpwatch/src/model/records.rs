//! A map from socket address to record that keeps its memory close to what
//! the records need: records live in fixed-size chunks (growth never
//! doubles them) and the hash table holds only 4-byte slot numbers, so its
//! power-of-two slack costs bytes per record, not a whole record.
use std::collections::HashMap;

/// Records per chunk: the most memory allocated ahead of need.
const CHUNK: usize = 1024;

#[derive(Debug)]
pub struct Records<T> {
    slots: HashMap<u64, u32>,
    chunks: Vec<Vec<Option<T>>>,
    /// Slots freed by removals, reused first.
    free: Vec<u32>,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Records<T> {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.slots.contains_key(key)
    }

    fn cell(&self, slot: u32) -> Option<&Option<T>> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)
    }

    fn cell_mut(&mut self, slot: u32) -> Option<&mut Option<T>> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    pub fn get(&self, key: &u64) -> Option<&T> {
        self.cell(*self.slots.get(key)?)?.as_ref()
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut T> {
        let slot = *self.slots.get(key)?;
        self.cell_mut(slot)?.as_mut()
    }

    /// Inserts or replaces; returns the record replaced.
    pub fn insert(&mut self, key: u64, value: T) -> Option<T> {
        if let Some(&slot) = self.slots.get(&key) {
            return self.cell_mut(slot).and_then(|c| c.replace(value));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let chunk = self.chunks.len() - 1;
                self.chunks[chunk].push(None);
                (chunk * CHUNK + self.chunks[chunk].len() - 1) as u32
            }
        };
        if let Some(cell) = self.cell_mut(slot) {
            *cell = Some(value);
        }
        self.slots.insert(key, slot);
        None
    }

    pub fn remove(&mut self, key: &u64) -> Option<T> {
        let slot = self.slots.remove(key)?;
        let value = self.cell_mut(slot)?.take();
        self.free.push(slot);
        if self.slots.is_empty() {
            // Give everything back once empty (a host that went quiet).
            *self = Self::default();
        }
        value
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().filter_map(Option::as_ref)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten().filter_map(Option::as_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map() {
        let mut r = Records::default();
        for k in 0..3000u64 {
            assert_eq!(r.insert(k * 64, k), None);
        }
        assert_eq!(r.len(), 3000);
        assert_eq!(r.insert(64, 100), Some(1));
        assert_eq!(r.get(&64), Some(&100));
        if let Some(v) = r.get_mut(&128) {
            *v = 7;
        }
        assert_eq!(r.remove(&128), Some(7));
        assert_eq!(r.remove(&128), None);
        assert!(!r.contains_key(&128));
        // A freed slot is reused before a chunk grows.
        let chunks = r.chunks.len();
        r.insert(1, 1);
        assert_eq!(r.chunks.len(), chunks);
        assert_eq!(r.values().count(), 3000);
        assert_eq!(r.values().copied().filter(|v| *v == 1).count(), 1);
        for k in 0..3000u64 {
            r.remove(&(k * 64));
        }
        r.remove(&1);
        assert!(r.is_empty());
        assert!(r.chunks.is_empty(), "memory given back");
    }
}
