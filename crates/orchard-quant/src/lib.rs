//! Block formats of ggml: dequantize, quantize, and dot products against activation blocks
