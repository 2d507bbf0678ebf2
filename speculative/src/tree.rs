//! EAGLE-2 dynamic draft tree (method.md, "Dynamic tree"): expand the global top-k frontier level by
//! level, keep every candidate in a history, then rerank the history into a tree of `total_nodes`
//! nodes whose parents always precede their children. No branching factor or size is fixed in the
//! index arithmetic: buffers follow the configuration.

use hierspec_model::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeConfig {
    /// Children proposed per node, and frontier width.
    pub top_k: usize,
    /// Forward passes of the drafter (tree levels below the root).
    pub depth: usize,
    /// Nodes in the emitted tree, root included.
    pub total_nodes: usize,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self { top_k: 10, depth: 6, total_nodes: 60 }
    }
}

impl TreeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 || self.depth == 0 || self.total_nodes == 0 {
            return Err(Error::Setting(format!(
                "tree settings must be positive: top-k {}, depth {}, nodes {}",
                self.top_k, self.depth, self.total_nodes
            )));
        }
        Ok(())
    }
}

/// A candidate the drafter proposed: its token, its log-probability under its parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub token: u32,
    pub logprob: f32,
}

/// A node of the frontier handed to the drafter for the next level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrontierNode {
    /// Index into the history (the id `expand` callers may key their state by).
    pub history: usize,
    pub token: u32,
    /// Depth below the root (level-1 nodes have depth 1).
    pub depth: usize,
    /// History index of the parent; None for level-1 nodes (their parent is the root).
    pub parent: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    token: u32,
    score: f32,
    depth: usize,
    parent: Option<usize>,
}

/// The emitted tree. Node 0 is the root (the newest accepted token).
#[derive(Debug, Clone, PartialEq)]
pub struct DraftTree {
    pub tokens: Vec<u32>,
    /// parents[0] is None; every other parent index is smaller than its child's.
    pub parents: Vec<Option<usize>>,
    /// Depth below the root: position of node i = root position + depths[i].
    pub depths: Vec<usize>,
    /// Cumulative log-probability (0 for the root).
    pub scores: Vec<f32>,
}

impl DraftTree {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Row-major N x N: `mask[i * n + j]` is true when j is i or an ancestor of i.
    pub fn ancestor_mask(&self) -> Vec<bool> {
        let n = self.len();
        let mut mask = vec![false; n * n];
        for i in 0..n {
            let mut j = Some(i);
            while let Some(a) = j {
                mask[i * n + a] = true;
                j = self.parents[a];
            }
        }
        mask
    }
}

/// Build the tree. `first` holds the root's top-k proposals (from the drafter's forward on the
/// pending inputs); `expand` runs one drafter forward on a frontier and returns each node's top-k
/// proposals, in frontier order.
pub fn build_tree(
    cfg: &TreeConfig,
    root: u32,
    first: &[Proposal],
    mut expand: impl FnMut(&[FrontierNode]) -> Result<Vec<Vec<Proposal>>>,
) -> Result<DraftTree> {
    cfg.validate()?;
    let mut history: Vec<Candidate> = first
        .iter()
        .take(cfg.top_k)
        .map(|p| Candidate { token: p.token, score: p.logprob, depth: 1, parent: None })
        .collect();
    let mut frontier: Vec<usize> = (0..history.len()).collect();
    for _level in 1..cfg.depth {
        if frontier.is_empty() {
            break;
        }
        let nodes: Vec<FrontierNode> = frontier
            .iter()
            .map(|&h| FrontierNode { history: h, token: history[h].token, depth: history[h].depth, parent: history[h].parent })
            .collect();
        let proposals = expand(&nodes)?;
        if proposals.len() != nodes.len() {
            return Err(Error::Setting(format!("drafter returned {} rows for {} frontier nodes", proposals.len(), nodes.len())));
        }
        let level_start = history.len();
        for (node, props) in nodes.iter().zip(&proposals) {
            let base = history[node.history].score;
            for p in props.iter().take(cfg.top_k) {
                history.push(Candidate { token: p.token, score: base + p.logprob, depth: node.depth + 1, parent: Some(node.history) });
            }
        }
        // Next frontier: the global top-k of this level's children by cumulative score.
        let mut level: Vec<usize> = (level_start..history.len()).collect();
        level.sort_by(|&a, &b| rank(&history, a, b));
        level.truncate(cfg.top_k);
        frontier = level;
    }

    // Rerank: the best N-1 candidates; a parent outranks its child (score >= since logprobs <= 0, ties
    // go to the shallower node), so every chosen node's parent is chosen too.
    let mut chosen: Vec<usize> = (0..history.len()).collect();
    chosen.sort_by(|&a, &b| rank(&history, a, b));
    chosen.truncate(cfg.total_nodes - 1);
    chosen.sort_unstable();

    let mut tree_index = vec![usize::MAX; history.len()];
    let mut tree = DraftTree { tokens: vec![root], parents: vec![None], depths: vec![0], scores: vec![0.0] };
    for &h in &chosen {
        let c = &history[h];
        let parent = match c.parent {
            None => 0,
            Some(p) if tree_index[p] != usize::MAX => tree_index[p],
            Some(_) => {
                return Err(Error::Setting("drafter log-probabilities must be <= 0 (a child outranked its parent)".into()))
            }
        };
        tree_index[h] = tree.len();
        tree.tokens.push(c.token);
        tree.parents.push(Some(parent));
        tree.depths.push(c.depth);
        tree.scores.push(c.score);
    }
    Ok(tree)
}

/// Higher score first; on equal scores the shallower node, then the earlier one.
fn rank(history: &[Candidate], a: usize, b: usize) -> std::cmp::Ordering {
    let (x, y) = (&history[a], &history[b]);
    y.score.total_cmp(&x.score).then(x.depth.cmp(&y.depth)).then(a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(token: u32, prob: f32) -> Proposal {
        Proposal { token, logprob: prob.ln() }
    }

    /// A drafter whose children of token t are t*10+1 (p=0.6) and t*10+2 (p=0.3), t*10+3 (p=0.1).
    fn expand(nodes: &[FrontierNode]) -> Result<Vec<Vec<Proposal>>> {
        Ok(nodes.iter().map(|n| vec![p(n.token * 10 + 1, 0.6), p(n.token * 10 + 2, 0.3), p(n.token * 10 + 3, 0.1)]).collect())
    }

    #[test]
    fn known_logits_give_a_known_tree() {
        let cfg = TreeConfig { top_k: 2, depth: 3, total_nodes: 6 };
        let tree = build_tree(&cfg, 0, &[p(1, 0.7), p(2, 0.2), p(3, 0.1)], expand).unwrap();
        // history: L1 {1: .7, 2: .2}; L2 children of 1 and 2: 11 .42, 12 .21, 13 .07, 21 .12, 22 .06, 23 .02;
        // frontier {11, 12}; L3: 111 .252, 112 .126, 113 .042, 121 .126, 122 .063, 123 .021.
        // Best 5: 1 (.7), 11 (.42), 111 (.252), 12 (.21), 2 (.2); sorted by history index.
        assert_eq!(tree.tokens, vec![0, 1, 2, 11, 12, 111]);
        assert_eq!(tree.parents, vec![None, Some(0), Some(0), Some(1), Some(1), Some(3)]);
        assert_eq!(tree.depths, vec![0, 1, 1, 2, 2, 3]);
        for (i, par) in tree.parents.iter().enumerate() {
            if let Some(par) = par {
                assert!(*par < i);
            }
        }
        let m = tree.ancestor_mask();
        let n = tree.len();
        let row = |i: usize| (0..n).filter(|&j| m[i * n + j]).collect::<Vec<_>>();
        assert_eq!(row(5), vec![0, 1, 3, 5]);
        assert_eq!(row(2), vec![0, 2]);
        assert_eq!(row(0), vec![0]);
    }

    #[test]
    fn ties_go_to_the_shallower_node_so_parents_come_first() {
        // Every child has probability 1: scores tie along a chain; parents must still precede.
        let cfg = TreeConfig { top_k: 1, depth: 5, total_nodes: 4 };
        let tree = build_tree(&cfg, 9, &[p(1, 1.0)], |nodes: &[FrontierNode]| {
            Ok(nodes.iter().map(|n| vec![p(n.token + 1, 1.0)]).collect())
        })
        .unwrap();
        assert_eq!(tree.tokens, vec![9, 1, 2, 3]);
        assert_eq!(tree.parents, vec![None, Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn shapes_without_hard_caps() {
        // N = 1: the root alone.
        let t = build_tree(&TreeConfig { top_k: 4, depth: 3, total_nodes: 1 }, 5, &[p(1, 0.5), p(2, 0.5)], expand).unwrap();
        assert_eq!(t.tokens, vec![5]);
        // top_k = 1: a chain of depth nodes.
        let t = build_tree(&TreeConfig { top_k: 1, depth: 4, total_nodes: 100 }, 0, &[p(1, 0.9)], expand).unwrap();
        assert_eq!(t.tokens, vec![0, 1, 11, 111, 1111]);
        // N larger than the history: every candidate is used (1 + 3 + 3*3 + 3*3 = 22 with top_k 3, depth 3).
        let t = build_tree(&TreeConfig { top_k: 3, depth: 3, total_nodes: 100 }, 0, &[p(1, 0.5), p(2, 0.3), p(3, 0.2)], expand).unwrap();
        assert_eq!(t.len(), 1 + 3 + 9 + 9);
        // A big tree: 200 nodes from top_k 16, depth 8.
        let first: Vec<Proposal> = (0..16).map(|i| p(i + 1, 1.0 / 16.0)).collect();
        let wide = |nodes: &[FrontierNode]| -> Result<Vec<Vec<Proposal>>> {
            Ok(nodes.iter().map(|n| (0..16).map(|i| p(n.token * 17 + i, 1.0 / 16.0)).collect()).collect())
        };
        let t = build_tree(&TreeConfig { top_k: 16, depth: 8, total_nodes: 200 }, 0, &first, wide).unwrap();
        assert_eq!(t.len(), 200);
        assert!(t.parents.iter().enumerate().skip(1).all(|(i, par)| par.unwrap() < i));
    }

    #[test]
    fn bad_settings_are_rejected() {
        for cfg in [
            TreeConfig { top_k: 0, depth: 1, total_nodes: 5 },
            TreeConfig { top_k: 1, depth: 0, total_nodes: 5 },
            TreeConfig { top_k: 1, depth: 1, total_nodes: 0 },
        ] {
            assert!(build_tree(&cfg, 0, &[p(1, 1.0)], expand).is_err());
        }
    }
}
