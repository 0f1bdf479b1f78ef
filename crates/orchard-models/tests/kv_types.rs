//! KV cache types through `Context`: the CPU stores q8_0 / q4_0 in a fraction of the f16 bytes
//! and decodes with them; a backend that stores f16 only (the GPU backend keeps the trait's
//! default `alloc_kv_typed`) refuses them with a message naming the flag, rather than silently
//! storing f16.

mod common;

use orchard_backend::*;
use orchard_core::DType;
use orchard_models::{Context, ContextOptions, ModelError};

/// A backend that only knows f16 KV: every op goes to a `CpuBackend`, but `alloc_kv_typed` is
/// the trait's default, as for `GpuBackend`.
struct F16Only(CpuBackend);

impl Backend for F16Only {
    fn name(&self) -> String {
        "f16-only".into()
    }
    fn supports_matmul(&self, d: DType) -> bool {
        self.0.supports_matmul(d)
    }
    fn add_weight(&mut self, w: &HostWeight) -> Result<WeightId, BackendError> {
        self.0.add_weight(w)
    }
    fn alloc_kv(&mut self, l: usize, n: usize, k: usize, v: usize) -> Result<(), BackendError> {
        self.0.alloc_kv(l, n, k, v)
    }
    fn kv_bytes(&self) -> usize {
        self.0.kv_bytes()
    }
    fn alloc(&mut self, n: usize, w: usize) -> BufId {
        self.0.alloc(n, w)
    }
    fn set_rows(&mut self, b: BufId, n: usize) {
        self.0.set_rows(b, n)
    }
    fn upload(&mut self, b: BufId, d: &[f32]) {
        self.0.upload(b, d)
    }
    fn download(&mut self, b: BufId, o: &mut Vec<f32>) {
        self.0.download(b, o)
    }
    fn copy_rows(&mut self, s: BufId, r: &[u32], d: BufId) {
        self.0.copy_rows(s, r, d)
    }
    fn rms_norm(&mut self, x: BufId, w: Option<WeightId>, eps: f32, o: BufId) {
        self.0.rms_norm(x, w, eps, o)
    }
    fn head_rms_norm(&mut self, x: BufId, w: WeightId, hd: usize, eps: f32) {
        self.0.head_rms_norm(x, w, hd, eps)
    }
    fn matmul(&mut self, w: WeightId, x: BufId, o: BufId) {
        self.0.matmul(w, x, o)
    }
    fn add_bias(&mut self, x: BufId, b: WeightId) {
        self.0.add_bias(x, b)
    }
    fn add(&mut self, x: BufId, y: BufId) {
        self.0.add(x, y)
    }
    fn scale(&mut self, x: BufId, s: f32) {
        self.0.scale(x, s)
    }
    fn softcap(&mut self, x: BufId, s: f32) {
        self.0.softcap(x, s)
    }
    fn rope(&mut self, x: BufId, t: &[TokenSlot], p: &RopeParams, f: Option<WeightId>) {
        self.0.rope(x, t, p, f)
    }
    fn glu(&mut self, g: BufId, u: BufId, k: GluKind, o: BufId) {
        self.0.glu(g, u, k, o)
    }
    fn attention(
        &mut self,
        layer: usize,
        q: BufId,
        k: BufId,
        v: BufId,
        batch: &AttnBatch<'_>,
        p: &AttnParams,
        out: BufId,
    ) -> Result<(), BackendError> {
        self.0.attention(layer, q, k, v, batch, p, out)
    }
}

fn opts(t: DType) -> ContextOptions {
    ContextOptions {
        n_ctx: 64,
        type_k: t,
        type_v: t,
    }
}

#[test]
fn an_f16_only_backend_refuses_a_quantized_cache_with_the_flag_to_change() {
    let model = common::load(common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let offload = || {
        Some((
            Box::new(F16Only(CpuBackend::new())) as Box<dyn Backend>,
            999,
        ))
    };
    let e = match Context::with_offload(model.clone(), opts(DType::Q8_0), offload()) {
        Ok(_) => panic!("q8_0 KV accepted by an f16-only backend"),
        Err(e) => e,
    };
    assert!(matches!(e, ModelError::KvType { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("q8_0") && msg.contains("f16-only") && msg.contains("-ctk f16"),
        "{msg}"
    );
    // f16 still works there, and on the CPU every type is accepted with its own size.
    let f16 = Context::with_offload(model.clone(), opts(DType::F16), offload()).unwrap();
    let kv_f16 = f16.kv_bytes();
    for (t, num) in [(DType::Q8_0, 34), (DType::Q4_0, 18)] {
        let ctx = Context::new(model.clone(), opts(t)).unwrap();
        assert_eq!(ctx.kv_bytes() * 64, kv_f16 * num, "{t}");
    }
}

#[test]
fn a_type_without_cpu_kernels_is_a_clear_error() {
    let model = common::load(common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let e = match Context::new(model, opts(DType::Q4_K)) {
        Ok(_) => panic!("q4_K KV accepted (a 64-wide head is not a whole 256-value block)"),
        Err(e) => e,
    };
    assert!(matches!(e, ModelError::KvType { .. }), "{e}");
}
