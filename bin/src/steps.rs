//! `bench --synthetic`'s timing of the tree steps an EAGLE round repeats, eager against replayed
//! ([`hierspec_speculative::graphs`]) in one process: a draft round of a random head (a catch-up of
//! the accepted rows, then one forward per tree level) and the verification of the tree it drafts.
//! A random head drafts trees of the configured shape; their acceptance is not what is timed.

use burn::tensor::{Device, Distribution, Tensor};
use hierspec_model::{EagleConfig, EagleHead, Error, Llama, LlamaConfig, LogitsFor, Result};
use hierspec_speculative::drafter::{observe_prompt, EagleDrafter, TreeDrafter};
use hierspec_speculative::graphs::Graphs;
use hierspec_speculative::tree::{DraftTree, TreeConfig};
use hierspec_speculative::verify::Runner;

use crate::report::median;

/// One step kind, eager or replayed.
#[derive(serde::Serialize)]
pub struct StepTime {
    /// "draft round" or "tree verify".
    pub step: &'static str,
    /// Nodes of the tree.
    pub nodes: usize,
    /// Head forwards per draft round (catch-up and levels); 1 for a verification.
    pub forwards: usize,
    pub graphs: bool,
    /// Median wall time of one step through a device sync.
    pub wall_us: f64,
}

const REPS: usize = 30;

/// Positions the steps need after the prompt (a verified tree, padded to its row bucket).
pub const ROWS_AFTER_PROMPT: usize = 64;

/// Catch-up rows per round: what a round that accepts two drafts observes.
const ACCEPTED: usize = 3;

/// Eager, then replayed, then both again (the medians pool both passes): each step of `tree`'s shape
/// after `prompt`.
pub fn tree_steps(model: &Llama, cfg: &LlamaConfig, prompt: &[u32], tree: &TreeConfig, seed: u64) -> Result<Vec<StepTime>> {
    let device = model.embed_tokens.device();
    let head_cfg = EagleConfig::for_base(cfg);
    let capacity = prompt.len() + ACCEPTED + ROWS_AFTER_PROMPT;
    let head = EagleHead::random(&head_cfg, capacity + tree.depth * tree.top_k + 1, seed, &device)?;
    let mut walls: [[Vec<f64>; 2]; 2] = Default::default();
    let mut shape = (0, 0);
    for pass in 0..4 {
        let graphs = pass % 2 == 1;
        let (draft, forwards, drafted) = draft_rounds(model, cfg, &head, &head_cfg, prompt, tree, graphs, &device)?;
        walls[0][graphs as usize].extend(draft);
        shape = (drafted.len(), forwards);
        walls[1][graphs as usize].extend(verify(model, cfg, prompt, &drafted, graphs, &device)?);
    }
    let mut out = Vec::new();
    for graphs in [false, true] {
        let g = graphs as usize;
        out.push(StepTime { step: "draft round", nodes: shape.0, forwards: shape.1, graphs, wall_us: median(&mut walls[0][g]) });
        out.push(StepTime { step: "tree verify", nodes: shape.0, forwards: 1, graphs, wall_us: median(&mut walls[1][g]) });
    }
    Ok(out)
}

/// Wall times of draft rounds (observe the accepted rows, draft), head forwards per round, the tree.
#[allow(clippy::too_many_arguments)]
fn draft_rounds(model: &Llama, cfg: &LlamaConfig, head: &EagleHead, head_cfg: &EagleConfig, prompt: &[u32], tree: &TreeConfig, graphs: bool, device: &Device) -> Result<(Vec<f64>, usize, DraftTree)> {
    let h = cfg.hidden_size;
    let mut drafter = EagleDrafter::new(head, head_cfg, model, prompt.len() + ACCEPTED, tree)?;
    if !graphs {
        drafter = drafter.without_graphs();
    }
    let features = |rows: usize| Tensor::<2>::random([rows, h], Distribution::Normal(0.0, 1.0), device);
    observe_prompt(&mut drafter, features(prompt.len()), prompt, 11)?;
    let next: Vec<u32> = (0..ACCEPTED as u32).map(|i| (i * 7919 + 5) % cfg.vocab_size as u32).collect();
    let accepted = features(ACCEPTED);
    let mut walls = Vec::new();
    let mut drafted = None;
    let mut forwards = 0;
    for rep in 0..REPS + 3 {
        drafter.truncate(prompt.len());
        drafter.observe(accepted.clone(), &next)?;
        let before = drafter.forwards();
        let t = std::time::Instant::now();
        let tree = drafter.draft(next[ACCEPTED - 1], tree)?;
        sync(device)?;
        // The first rounds capture.
        if rep >= 3 {
            walls.push(t.elapsed().as_secs_f64() * 1e6);
        }
        forwards = drafter.forwards() - before;
        drafted = Some(tree);
    }
    Ok((walls, forwards, drafted.expect("REPS > 0")))
}

/// Wall times of verifying `tree` after the prompt (the cache cut back after each).
fn verify(model: &Llama, cfg: &LlamaConfig, prompt: &[u32], tree: &DraftTree, graphs: bool, device: &Device) -> Result<Vec<f64>> {
    let mut r = Runner::new(model, cfg, prompt.len() + ROWS_AFTER_PROMPT)?;
    if !graphs {
        r.graphs = Graphs::disabled();
    }
    r.forward(prompt, LogitsFor::Last);
    let mut walls = Vec::new();
    for rep in 0..REPS + 3 {
        let t = std::time::Instant::now();
        let (logits, _) = r.forward_tree(tree);
        sync(device)?;
        if rep >= 3 {
            walls.push(t.elapsed().as_secs_f64() * 1e6);
        }
        drop(logits);
        r.cache.truncate(prompt.len());
    }
    Ok(walls)
}

fn sync(device: &Device) -> Result<()> {
    device.sync().map_err(|e| Error::Setting(format!("device sync: {e:?}")))
}
