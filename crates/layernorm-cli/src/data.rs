//! Example data shared by the demo and the learners' tools: the seed's two sentences and a
//! seeded random batch of the seed's (32, 50, 128) shape.

/// One student's sentence: its words and their 2-dim embeddings.
pub struct Sentence {
    pub text: &'static str,
    pub words: [&'static str; 3],
    pub embeddings: [[f32; 2]; 3],
}

/// The seed's example: two students' sentences, three words each.
pub const SENTENCES: [Sentence; 2] = [
    Sentence {
        text: "I love AI",
        words: ["I", "love", "AI"],
        embeddings: [[0.1, 0.5], [0.3, 0.8], [0.9, 0.4]],
    },
    Sentence {
        text: "AI is amazing",
        words: ["AI", "is", "amazing"],
        embeddings: [[0.9, 0.4], [0.2, 0.3], [0.6, 0.7]],
    },
];

/// The seed's (batch_size, sequence_length, embedding_dim).
pub const BATCH_SHAPE: [usize; 3] = [32, 50, 128];

/// A seeded random batch: tokens of different offsets and scales, as a real layer's
/// activations might be. The same numbers on every machine.
pub fn random_batch(shape: [usize; 3], seed: u64) -> Vec<f32> {
    let [b, s, e] = shape;
    let mut rng = SplitMix64(seed);
    let mut x = Vec::with_capacity(b * s * e);
    for _ in 0..b * s {
        let (offset, scale) = (rng.normal() * 3.0, 0.5 + 4.0 * rng.uniform());
        x.extend((0..e).map(|_| (offset + scale * rng.normal()) as f32));
    }
    x
}

/// A small seeded generator (SplitMix64) with uniform and normal draws.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
