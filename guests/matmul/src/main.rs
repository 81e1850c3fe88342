//! matmul: dense N x N f64 matrix multiply (i-k-j order), scalar float
//! multiply-add in a tight inner loop. Wasm floats are IEEE-deterministic
//! (no FMA, no relaxed SIMD), so the checksum is bit-exact everywhere.
fn main() {
    let n = common::arg_u64(768) as usize;
    let a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            ((i * 31 + j * 17) % 101) as f64 / 101.0 - 0.5
        })
        .collect();
    let b: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            ((i * 13 + j * 7 + 3) % 89) as f64 / 89.0 + 0.25
        })
        .collect();
    let mut c = vec![0.0f64; n * n];
    for i in 0..n {
        let crow = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            let brow = &b[k * n..(k + 1) * n];
            for (cj, bj) in crow.iter_mut().zip(brow) {
                *cj += aik * bj;
            }
        }
    }
    let sum: f64 = c.iter().sum();
    let trace: f64 = (0..n).map(|i| c[i * n + i]).sum();
    let mut bits = common::FNV_OFFSET;
    for x in &c {
        bits = common::fnv1a_with(bits, &x.to_bits().to_le_bytes());
    }
    println!("matmul {n}x{n}: sum={sum:.9e} trace={trace:.9e} bits={bits:016x}");
}
