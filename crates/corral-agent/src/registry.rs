//! Name and id bookkeeping for the VMs on this host. Names are reserved before a VM's disks
//! are created, so two concurrent creates of `web01` cannot both succeed.

use crate::error::Error;
use crate::vm::VmHandle;
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct Registry {
    pub by_id: HashMap<String, VmHandle>,
    pub by_name: HashMap<String, String>,
    reserved: HashSet<String>,
}

impl Registry {
    pub fn reserve(&mut self, name: &str) -> Result<(), Error> {
        if self.by_name.contains_key(name) || self.reserved.contains(name) {
            return Err(Error::conflict(format!(
                "a VM named {name:?} already exists"
            )));
        }
        self.reserved.insert(name.to_string());
        Ok(())
    }
    /// A create, clone or import of this name is under way here.
    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(name)
    }
    pub fn release(&mut self, name: &str) {
        self.reserved.remove(name);
    }
    pub fn insert(&mut self, name: &str, handle: VmHandle) {
        self.reserved.remove(name);
        self.by_name.insert(name.to_string(), handle.id.clone());
        self.by_id.insert(handle.id.clone(), handle);
    }
    pub fn remove(&mut self, id: &str) {
        if let Some(h) = self.by_id.remove(id) {
            self.by_name.retain(|_, v| v != &h.id);
        }
    }
    pub fn rename(&mut self, old: &str, new: &str) {
        if let Some(id) = self.by_name.remove(old) {
            self.by_name.insert(new.to_string(), id);
        }
    }
    /// Find by name, or by id.
    pub fn find(&self, key: &str) -> Option<&VmHandle> {
        self.by_name
            .get(key)
            .and_then(|id| self.by_id.get(id))
            .or_else(|| self.by_id.get(key))
    }
}
