//! The Brownian noise of ComfyUI's SDE samplers: `BrownianTreeNoiseSampler` over
//! `torchsde.BrownianTree` (a `BrownianInterval` with `halfway_tree=True`, `tol=1e-6`,
//! `pool_size=24`, no Lévy area), on the CPU in float32, so a seed gives ComfyUI's noise.
//!
//! References: torchsde `_brownian/brownian_interval.py` (`_Interval._split_exact`, the
//! Brownian bridge in `_increment_and_space_time_levy_area`, `_loc_inner`), `derived.py`
//! (`BrownianTree`), ComfyUI `k_diffusion/sampling.py` (`BatchedBrownianTree`,
//! `BrownianTreeNoiseSampler`), numpy `random/bit_generator.pyx` (`SeedSequence`: the seeds
//! of each tree node).

use std::collections::{HashMap, VecDeque};

use crate::sampling::TorchGenerator;

/// numpy's `SeedSequence(entropy, spawn_key, pool_size).generate_state(n)` (O'Neill's
/// seed_seq hash), for non-negative integer entropy and spawn keys.
pub fn seed_sequence_state(
    entropy: u64,
    spawn_key: &[u64],
    pool_size: usize,
    n: usize,
) -> Vec<u32> {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_MULT_L: u32 = 0xca01_f9dd;
    const MIX_MULT_R: u32 = 0x4973_f715;
    // `_coerce_to_uint32_array`: 32-bit words, lowest first; 0 is one word.
    let words = |mut v: u64| {
        let mut out = vec![];
        loop {
            out.push(v as u32);
            v >>= 32;
            if v == 0 {
                break out;
            }
        }
    };
    let mut entropy_words = words(entropy);
    let spawn: Vec<u32> = spawn_key.iter().flat_map(|&k| words(k)).collect();
    if !spawn.is_empty() && entropy_words.len() < pool_size {
        entropy_words.resize(pool_size, 0);
    }
    entropy_words.extend(spawn);

    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut value = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        value = value.wrapping_mul(hash_const);
        value ^ (value >> 16)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool: Vec<u32> = (0..pool_size)
        .map(|i| hashmix(entropy_words.get(i).copied().unwrap_or(0)))
        .collect();
    for src in 0..pool_size {
        for dst in 0..pool_size {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &word in entropy_words.iter().skip(pool_size) {
        for slot in pool.iter_mut() {
            *slot = mix(*slot, hashmix(word));
        }
    }
    let mut hash_const = INIT_B;
    (0..n)
        .map(|i| {
            let mut v = pool[i % pool_size] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> 16)
        })
        .collect()
}

const POOL_SIZE: usize = 24;
/// torchsde's `cache_size` default: results do not depend on it, memory does.
const CACHE_SIZE: usize = 45;

struct Node {
    start: f64,
    end: f64,
    parent: Option<usize>,
    is_left: bool,
    spawn_key: u64,
    depth: u64,
    /// Set when split: the midpoint, the seed of the bridge noise, the children.
    split: Option<(f64, u32, usize, usize)>,
}

/// `torchsde.BrownianTree(t0, zeros(size), t1, entropy=seed)` as ComfyUI builds it.
pub struct BrownianTree {
    nodes: Vec<Node>,
    numel: usize,
    entropy: u64,
    /// The top interval's increment W(t1) − W(t0).
    top_w: Vec<f32>,
    cache: HashMap<usize, Vec<f32>>,
    order: VecDeque<usize>,
}

/// `round(x, 6)`: Python rounds the exact decimal value (tol = 1e-6 → 6 digits).
fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

fn randn(seed: u32, numel: usize) -> Vec<f32> {
    TorchGenerator::new(seed as u64).randn(numel)
}

impl BrownianTree {
    pub fn new(t0: f64, t1: f64, numel: usize, entropy: u64) -> Self {
        let seeds = seed_sequence_state(entropy, &[], POOL_SIZE, 3);
        let scale = (t1 - t0).sqrt() as f32;
        let top_w = randn(seeds[0], numel)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        Self {
            nodes: vec![Node {
                start: round6(t0),
                end: round6(t1),
                parent: None,
                is_left: false,
                spawn_key: 0,
                depth: 0,
                split: None,
            }],
            numel,
            entropy,
            top_w,
            cache: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// W(tb) − W(ta), ta ≤ tb, clamped to the tree's interval.
    pub fn increment(&mut self, ta: f64, tb: f64) -> Vec<f32> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let (ta, tb) = (ta.clamp(start, end), tb.clamp(start, end));
        if ta == tb {
            return vec![0.0; self.numel];
        }
        let mut intervals = Vec::new();
        self.locate(0, round6(ta), round6(tb), &mut intervals);
        let mut total = self.w(intervals[0]);
        for &i in &intervals[1..] {
            let w = self.w(i);
            total.iter_mut().zip(&w).for_each(|(t, v)| *t += v);
        }
        total
    }

    /// `_loc_inner`: the intervals that tile [ta, tb], splitting halfway as needed.
    fn locate(&mut self, node: usize, ta: f64, tb: f64, out: &mut Vec<usize>) {
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        if ta == start && tb == end {
            out.push(node);
            return;
        }
        let (midway, left, right) = match self.nodes[node].split {
            Some((m, _, l, r)) => (m, l, r),
            None => {
                self.split(node, if ta == start { tb } else { ta });
                return self.locate(node, ta, tb, out);
            }
        };
        if tb <= midway {
            self.locate(left, ta, tb, out);
        } else if ta >= midway {
            self.locate(right, ta, tb, out);
        } else {
            self.locate(left, ta, midway, out);
            self.locate(right, midway, tb, out);
        }
    }

    /// `_split`: split at the exact middle, then go on towards `target` until a midpoint is
    /// `target`.
    fn split(&mut self, node: usize, target: f64) {
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        let midway = round6(0.5 * (end + start));
        let (key, depth) = (self.nodes[node].spawn_key, self.nodes[node].depth);
        let seeds = seed_sequence_state(self.entropy, &[key, depth], POOL_SIZE, 4);
        let child = |is_left: bool, start: f64, end: f64| Node {
            start,
            end,
            parent: Some(node),
            is_left,
            spawn_key: 2 * key + (!is_left) as u64,
            depth: depth + 1,
            split: None,
        };
        let left = self.nodes.len();
        self.nodes.push(child(true, start, midway));
        self.nodes.push(child(false, midway, end));
        self.nodes[node].split = Some((midway, seeds[0], left, left + 1));
        if target > midway {
            self.split(left + 1, target);
        } else if target < midway {
            self.split(left, target);
        }
    }

    /// The increment over a node's interval: the top's W, or the Brownian bridge from its
    /// parent's (`left = (Δl/h)·W + √(Δl·Δr/h)·ε`, `right = W − left`).
    fn w(&mut self, node: usize) -> Vec<f32> {
        let Some(parent) = self.nodes[node].parent else {
            return self.top_w.clone();
        };
        if let Some(w) = self.cache.get(&node) {
            return w.clone();
        }
        let parent_w = self.w(parent);
        let p = &self.nodes[parent];
        let (midway, seed, _, _) = p.split.expect("a parent is split");
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = midway - p.start;
        let right_diff = p.end - midway;
        let var = left_diff * right_diff * h_reciprocal;
        let noise = randn(seed, self.numel);
        let (ld, hr, sd) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        let left: Vec<f32> = parent_w
            .iter()
            .zip(&noise)
            .map(|(&w, &n)| (ld * w) * hr + sd * n)
            .collect();
        let out = if self.nodes[node].is_left {
            left
        } else {
            parent_w.iter().zip(&left).map(|(w, l)| w - l).collect()
        };
        if self.order.len() == CACHE_SIZE
            && let Some(old) = self.order.pop_front()
        {
            self.cache.remove(&old);
        }
        self.order.push_back(node);
        self.cache.insert(node, out.clone());
        out
    }
}

/// `BrownianTreeNoiseSampler(x, σ_min, σ_max, seed, cpu=True)`: unit-variance noise between
/// two σ, `W(σ, σ_next) / √|σ_next − σ|` (with the sign of σ decreasing).
pub struct BrownianNoise {
    tree: BrownianTree,
}

impl BrownianNoise {
    pub fn new(sigma_min: f32, sigma_max: f32, numel: usize, seed: u64) -> Self {
        Self {
            tree: BrownianTree::new(sigma_min as f64, sigma_max as f64, numel, seed),
        }
    }

    pub fn sample(&mut self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let (lo, hi, sign) = if sigma < sigma_next {
            (sigma, sigma_next, 1.0f32)
        } else {
            (sigma_next, sigma, -1.0)
        };
        let w = self.tree.increment(lo as f64, hi as f64);
        let scale = (sigma_next - sigma).abs().sqrt();
        w.into_iter().map(|v| v * sign / scale).collect()
    }
}
