//! The template catalogue as the agent uses it: built-in templates from corral-install plus
//! the user's own under `STATE_DIR/templates`, with errors mapped to API kinds.

use crate::error::Error;
use corral_install::{Catalog, Template, TemplateError};
use std::path::{Path, PathBuf};

pub struct Templates {
    catalog: Catalog,
    dir: PathBuf,
}

fn api(e: TemplateError) -> Error {
    Error::from_error(e.kind(), e)
}

impl Templates {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Ok(Templates {
            catalog: Catalog::load(Some(dir)).map_err(api)?,
            dir: dir.to_path_buf(),
        })
    }
    /// Only the built-in templates (no osinfo-db, no user directory): for unit tests.
    #[cfg(test)]
    pub fn builtin() -> Result<Self, Error> {
        let catalog = Catalog::load_with(corral_install::templates::LoadOptions {
            user_dir: None,
            osinfo_dir: None,
        })
        .map_err(api)?;
        Ok(Templates {
            catalog,
            dir: PathBuf::new(),
        })
    }
    pub fn get(&self, name: &str) -> Result<&Template, Error> {
        self.catalog.get(name).map_err(api)
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn list(&self) -> Vec<&Template> {
        self.catalog.list()
    }
    /// The `osinfo:<short-id>` templates read from osinfo-db (empty when it is not installed).
    pub fn list_osinfo(&self) -> Vec<&Template> {
        self.catalog.list_osinfo()
    }
    pub fn add(&mut self, toml_text: &str) -> Result<Template, Error> {
        self.catalog.add_user(toml_text, &self.dir).map_err(api)
    }
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        self.catalog.remove_user(name, &self.dir).map_err(api)
    }
}
