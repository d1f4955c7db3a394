// FinchCPU: what the CPU running Finch can do, and the code that uses it.
//
// Everything here is chosen at run time: kernels for an instruction set are compiled with
// `__attribute__((target(...)))` and called only after cpuid says the CPU has it, and oneDNN
// is loaded with dlopen. Nothing depends on the machine that built Finch.
#ifndef FINCH_CPU_H
#define FINCH_CPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Instruction sets (cpuid and xgetbv)

enum {
    FINCH_CPU_AVX2 = 1 << 0,
    FINCH_CPU_FMA = 1 << 1,
    FINCH_CPU_F16C = 1 << 2,
    FINCH_CPU_AVX512F = 1 << 3,
    FINCH_CPU_AVX512BW = 1 << 4,
    FINCH_CPU_AVX512VL = 1 << 5,
    FINCH_CPU_AVX512VNNI = 1 << 6,
    FINCH_CPU_AVX512BF16 = 1 << 7,
    FINCH_CPU_AMX_BF16 = 1 << 8,
    FINCH_CPU_AMX_TILE = 1 << 9,
    FINCH_CPU_AVXVNNI = 1 << 10,
    FINCH_CPU_AVX512DQ = 1 << 11,
};

/// The features above that this CPU has and the operating system enabled (XSAVE state).
uint32_t finch_cpu_features(void);

/// The CPU's brand string ("AMD EPYC 9R14 ...") into buffer (at least 49 bytes); empty if unknown.
void finch_cpu_brand(char *buffer, size_t size);

// MARK: - bf16 conversion (round to nearest even, as PyTorch and oneDNN round)

/// The kernel level the conversions below use: 0 portable C, 1 AVX2, 2 AVX-512 (F+BW); all round
/// alike, subnormals included.
/// `maxLevel` caps it (the FINCH_ISA override); returns the level chosen.
int finch_bf16_set_level(int maxLevel, uint32_t features);

/// dst[i] = bf16(src[i]) for i < count.
void finch_f32_to_bf16(const float *src, uint16_t *dst, size_t count);
/// dst[i] = f32(src[i]) (exact).
void finch_bf16_to_f32(const uint16_t *src, float *dst, size_t count);
/// dst[i] = f32(bf16(src[i])): the value a bf16 product sees, kept as f32 (dst may equal src).
void finch_round_to_bf16(const float *src, float *dst, size_t count);
/// Rows of a strided matrix to bf16: dst [rows, columns] dense, src rows `ld` apart.
void finch_f32_to_bf16_rows(const float *src, size_t ld, uint16_t *dst, size_t rows, size_t columns);

// MARK: - Quantized rows times 8-bit activations (AVX512_VNNI; call only where the CPU has it)

/// sum over blocks of a q8_0 row (34-byte blocks) times activations qx (int8, 32 per block, scale dx[b]).
float finch_int8_dot_q8_0(const uint8_t *row, const int8_t *qx, const float *dx, int64_t blocks);
/// The same for q4_0 rows (18-byte blocks); sx[b] is the sum of block b's qx.
float finch_int8_dot_q4_0(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks);
/// The same for q4_1 rows (20-byte blocks).
float finch_int8_dot_q4_1(const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks);

// MARK: - Vector loops (vector.c): AVX-512F, AVX2 + FMA + F16C or portable, chosen at run time

/// The level the loops below use: 0 portable C, 1 AVX2 + FMA + F16C, 2 also AVX-512F for the
/// exp loops (exp, softmax and attention rows, SwiGLU). `maxLevel` caps it (the FINCH_ISA
/// override); returns the level chosen. Every level does the same fused multiply-adds in the
/// same order, except the K-quant rows of `finch_matvec` (the same sums in another order).
int finch_vector_set_level(int maxLevel, uint32_t features);
/// A fast exp (about 1 ulp on [-87.3, 88.7]; 0 below about -87.7, infinity above 88.7, NaN stays NaN).
float finch_exp(float x);
/// x[i] = exp(x[i] - shift); returns the sum of the results.
float finch_exp_shifted(float *x, int64_t count, float shift);
/// x[i] = exp(x[i] - shift); returns sum(exp(x - shift)) and, in *weighted, sum(exp(x - shift) * x)
/// of the values before.
float finch_exp_sums(float *x, int64_t count, float shift, float *weighted);
/// x[i] = exp(x[i] - shift) * scale.
void finch_scaled_exp(float *x, int64_t count, float shift, float scale);
/// The largest value, NaNs skipped (-infinity when there is none).
float finch_max(const float *x, int64_t count);
/// Attention's probabilities before normalising, for a bf16 P.V product: p[j] = bf16(exp(s[j] -
/// shift)) for j < visible and 0 up to length; returns the sum of the unrounded exponentials (as
/// `finch_exp_shifted` sums them).
float finch_exp_to_bf16(const float *s, int64_t visible, int64_t length, float shift, uint16_t *p);
/// One score row of attention's backward with bf16 products: p[j] = bf16(e), ds[j] = bf16(e (dp[j] -
/// delta)) with e = exp(s[j] - lse), for j < visible; both 0 up to length.
void finch_attention_row_grad_bf16(const float *s, const float *dp, int64_t visible, int64_t length, float lse, float delta,
                                   uint16_t *p, uint16_t *ds);
/// h = silu(g) * u, elementwise.
void finch_swiglu_forward(float *h, const float *g, const float *u, int64_t count);
/// The gradients of `finch_swiglu_forward` given dh (written, not accumulated).
void finch_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, int64_t count);
/// dot(w, x) over n values (a multiple of 32).
float finch_dot_f32(const float *w, const float *x, int64_t n);
/// A row of q8_0 / q4_0 / q4_1 blocks (ggml layouts) dotted with f32 x; q4_1 also takes each
/// block's sum of x.
float finch_dot_q8_0(const uint8_t *row, const float *x, int64_t blocks);
float finch_dot_q4_0(const uint8_t *row, const float *x, int64_t blocks);
float finch_dot_q4_1(const uint8_t *row, const float *x, int64_t blocks, const float *blockSums);
enum { FINCH_MATVEC_F32 = 0, FINCH_MATVEC_Q8_0 = 1, FINCH_MATVEC_Q4_0 = 2, FINCH_MATVEC_Q4_1 = 3, FINCH_MATVEC_Q4_K = 4,
       FINCH_MATVEC_Q6_K = 5, FINCH_MATVEC_Q5_0 = 6,
       FINCH_MATVEC_Q5_K = 7, FINCH_MATVEC_Q5_1 = 8,
       FINCH_MATVEC_IQ4_NL = 9, FINCH_MATVEC_Q2_K = 10, FINCH_MATVEC_Q3_K = 11,
       FINCH_MATVEC_IQ4_XS = 12 };
/// Rows [0, rows) of a matrix (FINCH_MATVEC_*, rows `rowBytes` apart) times n vectors of
/// `columns` (a multiple of 32; of 256 for the K types): y[t * stride + r] = (or += when
/// `accumulate`) row r . x_t. q4_1 and q4_K also take each vector's sums of x per 32 values,
/// [t * columns / 32 + b].
void finch_matvec(int type, const uint8_t *w, int64_t rowBytes, int64_t rows, const float *x, int64_t columns, int64_t n,
                  const float *blockSums, float *y, int64_t stride, int accumulate);
enum { FINCH_INT8_Q8_0 = 0, FINCH_INT8_Q4_0 = 1, FINCH_INT8_Q4_1 = 2 };
/// A quantized row (FINCH_INT8_*) dotted with activations rounded to 8 bits per block of 32 (qx,
/// scales dx, sums of qx sx), on AVX512_VNNI when `vnni` (the caller checks the CPU), else AVX2 or portable.
float finch_int8_dot(int type, const uint8_t *row, const int8_t *qx, const float *dx, const int32_t *sx, int64_t blocks, int vnni);
/// scores[j] = scale * dot(q, keys + j * stride) over `width` values (a multiple of 8), j < count.
void finch_key_scores(const float *q, const float *keys, int64_t stride, int64_t count, int64_t width, float scale, float *scores);
/// out[0..<width] = sum over j < count of p[j] * (values + j * stride); width a multiple of 8.
void finch_weighted_values(const float *p, const float *values, int64_t stride, int64_t count, int64_t width, float *out);

// MARK: - Peak arithmetic loops (for `finch bench peak`)

/// Runs `iterations` rounds of 12 independent vector FMAs (fp32) or bf16 dot products and
/// returns a value that depends on them. kind: 0 AVX2 FMA, 1 AVX-512 FMA, 2 AVX512_BF16 dot
/// (each round 12 * lanes * 2 FLOPs); 3 AMX bf16 tile products (each round 4 * 16384 FLOPs;
/// call finch_amx_request first). The caller must check the feature first.
float finch_peak_loop(int kind, int64_t iterations);

/// Asks Linux for the AMX tile data state for this process (arch_prctl); 1 if granted.
int finch_amx_request(void);

// MARK: - oneDNN (libdnnl.so.2, loaded at run time)

/// Loads oneDNN 2.x and creates its CPU engine; `maxISA` (a dnnl_cpu_isa_t value, 0 = all)
/// caps the kernels it may use. Returns 0 on success, else a negative code and a message.
int finch_onednn_load(unsigned maxISA, char *message, size_t messageSize);
/// oneDNN's version as major * 10000 + minor * 100 + patch (0 when not loaded).
int finch_onednn_version(void);
/// The effective ISA oneDNN dispatches to (a dnnl_cpu_isa_t value).
unsigned finch_onednn_effective_isa(void);

/// Element types of a matmul operand.
enum { FINCH_F32 = 0, FINCH_BF16 = 1 };

/// C[m, n] = alpha * op(A) op(B) + beta * C, row-major, with fp32 accumulation and an fp32 C.
/// A and B are f32 or bf16 (both the same type). op(A) is [m, k] (A^T when transA), op(B) [k, n].
/// Primitives are created once per shape, type, alpha and beta and kept. Returns 0 on success;
/// the message of a failure is in finch_onednn_last_error.
int finch_onednn_matmul(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                        const void *a, int64_t lda, const void *b, int64_t ldb, int type, float beta,
                        float *c, int64_t ldc);
/// The same product on the calling thread alone, for use inside Finch's own parallel tasks: each
/// thread keeps its own primitives and stream, so calls from several threads run concurrently.
int finch_onednn_task_matmul(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                             const void *a, int64_t lda, const void *b, int64_t ldb, int type, float beta,
                             float *c, int64_t ldc);
/// `finch_f32_to_bf16_rows` split over oneDNN's OpenMP threads (on the calling thread alone
/// for small matrices, or when oneDNN is not loaded).
void finch_onednn_to_bf16_rows(const float *src, size_t ld, uint16_t *dst, size_t rows, size_t columns);
/// The implementation oneDNN picked for the last matmul this thread created (e.g.
/// "brg:avx512_core_bf16"), and this thread's last error.
const char *finch_onednn_last_implementation(void);
const char *finch_onednn_last_error(void);
/// Number of primitives in the cache.
int finch_onednn_cached_primitives(void);

/// 1 when oneDNN runs dense bf16 products on AMX here (within FINCH_ISA). Then bf16 products
/// with a strided operand run on dense copies, and bf16 products of varying rows keep a
/// primitive per shape (oneDNN 2.x's run-time-shape matmul has no AMX kernel).
int finch_onednn_amx_products(void);

#ifdef __cplusplus
}
#endif
#endif
