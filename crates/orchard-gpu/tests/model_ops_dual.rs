//! Op-by-op parity inside a real forward pass: a backend that runs every op on both the CPU and
//! the GPU, compares each op's output and then hands the CPU's result to the GPU, so that every
//! op of the pass is judged on identical inputs. Driven by `Context` over a synthetic Q4_K_M
//! llama (Q4_K, Q6_K and F32 weights), prompt and decode steps.

use orchard_backend::*;
use orchard_core::DType;
use orchard_gpu::GpuBackend;
use orchard_models::{Batch, Context, ContextOptions, Model};
use std::sync::Arc;

struct Dual {
    c: CpuBackend,
    g: GpuBackend,
    n: usize,
    /// Largest NMSE seen and the op that had it.
    worst: (f64, String),
}
impl Dual {
    fn check(&mut self, what: &str, b: BufId) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        self.c.download(b, &mut x);
        self.g.download(b, &mut y);
        let num: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
        let e = num / den.max(1e-30);
        self.n += 1;
        assert!(
            y.iter().all(|v| v.is_finite()),
            "op {} {what}: non-finite GPU output",
            self.n
        );
        if e > self.worst.0 {
            self.worst = (e, format!("op {} {what}", self.n));
            eprintln!("worst so far: {} NMSE {e:.3e}", self.worst.1);
        }
        assert!(
            e < 1e-8,
            "op {} {what}: NMSE {e} between CPU and GPU",
            self.n
        );
        // Resynchronise so that every op is judged on identical inputs: otherwise rounding
        // differences compound, and each 8-bit activation quantization amplifies them.
        self.g.upload(b, &x);
    }
}
impl Backend for Dual {
    fn name(&self) -> String {
        "dual".into()
    }
    fn supports_matmul(&self, d: DType) -> bool {
        self.g.supports_matmul(d)
    }
    fn add_weight(&mut self, w: &HostWeight) -> Result<WeightId, BackendError> {
        let a = self.c.add_weight(w)?;
        let b = self.g.add_weight(w)?;
        assert_eq!(a, b);
        Ok(a)
    }
    fn alloc_kv(&mut self, l: usize, n: usize, k: usize, v: usize) -> Result<(), BackendError> {
        self.c.alloc_kv(l, n, k, v)?;
        self.g.alloc_kv(l, n, k, v)
    }
    fn kv_bytes(&self) -> usize {
        self.c.kv_bytes()
    }
    fn alloc(&mut self, n: usize, w: usize) -> BufId {
        let a = self.c.alloc(n, w);
        let b = self.g.alloc(n, w);
        assert_eq!(a, b);
        a
    }
    fn set_rows(&mut self, b: BufId, n: usize) {
        self.c.set_rows(b, n);
        self.g.set_rows(b, n)
    }
    fn upload(&mut self, b: BufId, d: &[f32]) {
        self.c.upload(b, d);
        self.g.upload(b, d)
    }
    fn download(&mut self, b: BufId, o: &mut Vec<f32>) {
        self.g.download(b, o);
        self.c.download(b, o)
    }
    fn copy_rows(&mut self, s: BufId, r: &[u32], d: BufId) {
        self.c.copy_rows(s, r, d);
        self.g.copy_rows(s, r, d);
        self.check("copy_rows", d)
    }
    fn rms_norm(&mut self, x: BufId, w: Option<WeightId>, eps: f32, o: BufId) {
        self.c.rms_norm(x, w, eps, o);
        self.g.rms_norm(x, w, eps, o);
        self.check("rms_norm", o)
    }
    fn head_rms_norm(&mut self, x: BufId, w: WeightId, hd: usize, eps: f32) {
        self.c.head_rms_norm(x, w, hd, eps);
        self.g.head_rms_norm(x, w, hd, eps);
        self.check("head_norm", x)
    }
    fn matmul(&mut self, w: WeightId, x: BufId, o: BufId) {
        self.c.matmul(w, x, o);
        self.g.matmul(w, x, o);
        self.check(&format!("matmul w{}", w.0), o)
    }
    fn add_bias(&mut self, x: BufId, b: WeightId) {
        self.c.add_bias(x, b);
        self.g.add_bias(x, b);
        self.check("bias", x)
    }
    fn add(&mut self, x: BufId, y: BufId) {
        self.c.add(x, y);
        self.g.add(x, y);
        self.check("add", x)
    }
    fn scale(&mut self, x: BufId, s: f32) {
        self.c.scale(x, s);
        self.g.scale(x, s);
        self.check("scale", x)
    }
    fn softcap(&mut self, x: BufId, s: f32) {
        self.c.softcap(x, s);
        self.g.softcap(x, s);
        self.check("softcap", x)
    }
    fn rope(&mut self, x: BufId, t: &[TokenSlot], p: &RopeParams, f: Option<WeightId>) {
        self.c.rope(x, t, p, f);
        self.g.rope(x, t, p, f);
        self.check("rope", x)
    }
    fn glu(&mut self, g: BufId, u: BufId, k: GluKind, o: BufId) {
        self.c.glu(g, u, k, o);
        self.g.glu(g, u, k, o);
        self.check("glu", o)
    }
    fn attention(
        &mut self,
        l: usize,
        q: BufId,
        k: BufId,
        v: BufId,
        b: &AttnBatch<'_>,
        p: &AttnParams,
        o: BufId,
    ) -> Result<(), BackendError> {
        self.c.attention(l, q, k, v, b, p, o)?;
        self.g.attention(l, q, k, v, b, p, o)?;
        self.check("attention", o);
        Ok(())
    }
}
#[test]
fn every_op_of_a_q4_k_m_forward_pass_matches_the_cpu() {
    let dir = std::env::temp_dir().join(format!("orchard-gpu-dual-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q4km.gguf");
    let spec = orchard_models::synth::SynthSpec {
        arch: orchard_models::synth::SynthArch::Llama,
        n_layer: 3,
        n_embd: 512,
        n_ff: 1024,
        n_head: 8,
        n_head_kv: 4,
        head_dim: None,
        n_vocab: 2000,
        ftype: "Q4_K_M".into(),
        seed: 3,
        sparse: false,
        tie_embeddings: false,
        row_pool: None,
    };
    orchard_models::synth::write_synthetic_llama(&path, &spec).unwrap();
    let model = Arc::new(Model::load(&path).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    let dual = Dual {
        c: CpuBackend::new(),
        g: GpuBackend::new(None).expect("a GPU adapter"),
        n: 0,
        worst: (0.0, String::new()),
    };
    let mut ctx = Context::with_offload(
        model.clone(),
        ContextOptions {
            n_ctx: 64,
            ..Default::default()
        },
        Some((Box::new(dual), 999)),
    )
    .unwrap();
    let cells: Vec<u32> = (0..64).collect();
    let tables = [cells.as_slice()];
    let mut out = Vec::new();
    // a 12-token prompt (per-query f16 attention path), then two single-token steps
    let prompt = [2u32, 230, 288, 1149, 436, 318, 1515, 377, 43, 284, 221, 198];
    let mut pos = 0u32;
    for tokens in [&prompt[..], &[17], &[1999]] {
        let slots: Vec<TokenSlot> = (0..tokens.len() as u32)
            .map(|i| TokenSlot {
                seq: 0,
                pos: pos + i,
            })
            .collect();
        ctx.decode(
            &Batch {
                tokens,
                slots: &slots,
                cells: &tables,
                logits: &[tokens.len() as u32 - 1],
            },
            &mut out,
        )
        .unwrap();
        pos += tokens.len() as u32;
    }
    assert_eq!(out.len(), 2000);
}
