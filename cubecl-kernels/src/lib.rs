//! hierspec-kernels: fused kernels land here with the W4A16 and speculative-core issues.
