//! The PRNG: xoshiro256** seeded by SplitMix64, and the few distributions the generator draws,
//! all from basic IEEE operations so a seed gives the same numbers on every platform.

#[derive(Clone, Debug)]
pub(super) struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        let mut state = seed;
        Rng { s: [splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state)] }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    pub(super) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n` > 0; Lemire's multiply-shift, bias below 2^-64 · n).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A standard normal, approximately: the Irwin–Hall sum of six uniforms, rescaled (bounded at
    /// ±4.24 σ). Only `+` and `*`, so it is bit-identical on every platform, unlike `ln`/`cos`.
    pub(super) fn normal(&mut self) -> f64 {
        let mut sum = 0.0;
        for _ in 0..6 {
            sum += self.f64();
        }
        (sum - 3.0) * std::f64::consts::SQRT_2
    }

    /// Two independent standard normals.
    pub(super) fn normal_pair(&mut self) -> (f64, f64) {
        (self.normal(), self.normal())
    }

    /// Log-normal with this median and log-space standard deviation.
    pub(super) fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * exp(sigma * self.normal())
    }

    /// A uniformly random unit vector (east, north), by rejection from the unit disc (`sqrt` is
    /// correctly rounded everywhere; `sin`/`cos` are not).
    pub(super) fn direction(&mut self) -> (f64, f64) {
        loop {
            let x = 2.0 * self.f64() - 1.0;
            let y = 2.0 * self.f64() - 1.0;
            let r2 = x * x + y * y;
            if r2 > 1e-6 && r2 <= 1.0 {
                let r = r2.sqrt();
                return (x / r, y / r);
            }
        }
    }
}

/// `e^x` from basic IEEE operations only, so the output does not depend on the platform's libm
/// (relative error about 1e-15; `x` is clamped to ±700).
pub(super) fn exp(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = x - k * std::f64::consts::LN_2; // |r| ≤ ln 2 / 2
    let mut p = 1.0;
    for i in (1..=14).rev() {
        p = 1.0 + r * p / f64::from(i);
    }
    // 2^k, with k in [-1010, 1010]: a normal f64 built from its exponent bits.
    let two_k = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    p * two_k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -400..=400 {
            let x = f64::from(i) / 40.0;
            let (ours, libm) = (exp(x), x.exp());
            assert!(((ours - libm) / libm).abs() < 1e-14, "{x}: {ours} vs {libm}");
        }
        assert_eq!(exp(0.0), 1.0);
    }
}
