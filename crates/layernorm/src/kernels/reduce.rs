//! Row reductions in f64 with independent lane accumulators.
//!
//! A float sum is not associative, so the summation order is part of the result. Here it
//! depends only on the row length: element `i` goes to lane `i % LANES` (the tail continues
//! the pattern), and the lanes are combined as a fixed pairwise tree. Independent lanes let the
//! compiler keep `LANES` additions in flight instead of one dependent chain.

/// Accumulator lanes per sum (a power of two).
pub(crate) const LANES: usize = 8;

/// `K` simultaneous sums `Σ_i term(i)[k]` over `0..n`, each in f64, in the fixed order above.
#[inline(always)]
pub(crate) fn lane_sums<const K: usize>(
    n: usize,
    mut term: impl FnMut(usize) -> [f64; K],
) -> [f64; K] {
    let mut acc = [[0.0f64; LANES]; K];
    let body = n - n % LANES;
    let mut i = 0;
    let mut add = |lane: usize, t: [f64; K]| {
        for (acc, t) in acc.iter_mut().zip(t) {
            acc[lane] += t;
        }
    };
    while i < body {
        for lane in 0..LANES {
            add(lane, term(i + lane));
        }
        i += LANES;
    }
    for (lane, i) in (body..n).enumerate() {
        add(lane, term(i));
    }
    acc.map(combine_lanes)
}

#[inline(always)]
fn combine_lanes(mut lanes: [f64; LANES]) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_right_for_every_tail_length() {
        for n in 0..40 {
            let [s, q] = lane_sums(n, |i| [i as f64, (i * i) as f64]);
            let want_s: usize = (0..n).sum();
            let want_q: usize = (0..n).map(|i| i * i).sum();
            assert_eq!((s, q), (want_s as f64, want_q as f64), "n = {n}");
        }
    }
}
