//! Which compiled graph each variant runs. A variant's graph is compiled with its
//! values as graph inputs (`compile::interventions::lift_values`) and keyed by its
//! structure, so variants that differ only in a head, a mask, a mean or a vector share
//! one ONNX Runtime session, each fed its own values. A session lives while a variant
//! that runs it may still run; once none may, the few last released are kept for the
//! next variants of the same structure (a sweep's next pass), and older ones dropped.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::compile::interventions::Feed;
use crate::onnx::ModelProto;

/// Sessions kept after their last variant is released, for variants still to come.
const RELEASED_KEPT: usize = 4;

/// The graph one variant runs for one set of outputs.
#[derive(Clone)]
pub(crate) struct VariantGraph {
    /// The session key of its structure.
    pub key: String,
    /// Its own values, fed to the shared graph.
    pub feeds: Vec<Feed>,
}

#[derive(Default)]
pub(crate) struct SharedGraphs {
    /// `variant|outputs` -> its graph.
    by_variant: HashMap<String, VariantGraph>,
    /// Structure key -> the variants running it that are not released.
    users: HashMap<String, BTreeSet<String>>,
    /// Keys no unreleased variant runs, least recently released first.
    released: VecDeque<String>,
    /// `variant|outputs` -> its structure key, for every graph compiled, kept when
    /// the variant is released (a look ahead asks again of variants it did not run).
    keys: HashMap<String, String>,
}

/// The session key of a lifted graph: a hash of its bytes, the same for every variant
/// of the same structure.
pub(crate) fn structure_key(graph: &ModelProto) -> String {
    use prost::Message;
    // SipHash with fixed keys: the same within a run, which is all a key needs.
    let mut hasher = std::hash::DefaultHasher::new();
    graph.encode_to_vec().hash(&mut hasher);
    format!("structure:{:016x}", hasher.finish())
}

impl SharedGraphs {
    pub fn get(&self, variant: &str, outputs: &str) -> Option<&VariantGraph> {
        self.by_variant.get(&format!("{variant}|{outputs}"))
    }

    /// The structure key `variant`'s graph for `outputs` was found to have.
    pub fn known_key(&self, variant: &str, outputs: &str) -> Option<&str> {
        self.keys
            .get(&format!("{variant}|{outputs}"))
            .map(String::as_str)
    }

    pub fn know_key(&mut self, variant: &str, outputs: &str, key: &str) {
        self.keys
            .insert(format!("{variant}|{outputs}"), key.to_owned());
    }

    /// Records that `variant` runs `graph` for `outputs`.
    pub fn insert(&mut self, variant: &str, outputs: &str, graph: VariantGraph) {
        self.released.retain(|key| *key != graph.key);
        self.users
            .entry(graph.key.clone())
            .or_default()
            .insert(variant.to_owned());
        self.by_variant
            .insert(format!("{variant}|{outputs}"), graph);
    }

    /// Releases `variant`; returns the session keys to drop now.
    pub fn release(&mut self, variant: &str) -> Vec<String> {
        let prefix = format!("{variant}|");
        self.by_variant.retain(|key, _| !key.starts_with(&prefix));
        for (key, users) in &mut self.users {
            if users.remove(variant) && users.is_empty() {
                self.released.push_back(key.clone());
            }
        }
        self.users.retain(|_, users| !users.is_empty());
        let excess = self.released.len().saturating_sub(RELEASED_KEPT);
        self.released.drain(..excess).collect()
    }
}
