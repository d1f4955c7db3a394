// oneDNN 2.x matmul primitives, loaded with dlopen so that Finch builds and runs without it.
//
// Only the few entry points below are used; their types are declared here as the library's
// ABI defines them (oneDNN 2.x: memory and op descriptors are plain structs passed by
// pointer, so they are held in buffers larger than any 2.x version's structs).
#include "FinchCPU.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int status_t;                        // dnnl_status_t; 0 = success
typedef void *engine_t, *stream_t, *primitive_desc_t, *primitive_t, *memory_t, *attr_t, *post_ops_t;
typedef int64_t dims_t[12];                  // dnnl_dims_t (DNNL_MAX_NDIMS = 12)
typedef struct { _Alignas(64) unsigned char bytes[2048]; } memory_desc_t;     // 696 bytes in 2.6
typedef struct { _Alignas(64) unsigned char bytes[8192]; } matmul_desc_t;     // 2800 bytes in 2.6
typedef struct { int arg; memory_t memory; } exec_arg_t;
typedef struct { int major, minor, patch; const char *hash; unsigned cpu_runtime, gpu_runtime; } version_t;

enum { ENGINE_CPU = 1, DT_BF16 = 2, DT_F32 = 3, STREAM_IN_ORDER = 1, QUERY_IMPL_INFO_STR = 8,
       ARG_SRC = 1, ARG_DST = 17, ARG_WEIGHTS = 33 };

static struct {
    status_t (*engine_create)(engine_t *, int, size_t);
    status_t (*stream_create)(stream_t *, engine_t, unsigned);
    status_t (*memory_desc_init_by_strides)(memory_desc_t *, int, const int64_t *, int, const int64_t *);
    status_t (*matmul_desc_init)(matmul_desc_t *, const memory_desc_t *, const memory_desc_t *, const memory_desc_t *, const memory_desc_t *);
    status_t (*primitive_desc_create)(primitive_desc_t *, const void *, attr_t, engine_t, primitive_desc_t);
    status_t (*primitive_desc_query)(primitive_desc_t, int, int, void *);
    status_t (*primitive_desc_destroy)(primitive_desc_t);
    status_t (*primitive_create)(primitive_t *, primitive_desc_t);
    status_t (*primitive_destroy)(primitive_t);
    status_t (*primitive_execute)(primitive_t, stream_t, int, const exec_arg_t *);
    status_t (*memory_create)(memory_t *, const memory_desc_t *, engine_t, void *);
    status_t (*memory_set_data_handle)(memory_t, void *);
    status_t (*memory_destroy)(memory_t);
    status_t (*stream_wait)(stream_t);
    status_t (*attr_create)(attr_t *);
    status_t (*attr_destroy)(attr_t);
    status_t (*attr_set_output_scales)(attr_t, int64_t, int, const float *);
    status_t (*attr_set_post_ops)(attr_t, post_ops_t);
    status_t (*post_ops_create)(post_ops_t *);
    status_t (*post_ops_destroy)(post_ops_t);
    status_t (*post_ops_append_sum)(post_ops_t, float);
    status_t (*set_max_cpu_isa)(unsigned);
    unsigned (*get_effective_cpu_isa)(void);
    const version_t *(*version)(void);
    void (*omp_set_num_threads)(int);
    int (*omp_get_max_threads)(void);
    int (*omp_get_thread_num)(void);
    int (*omp_get_num_threads)(void);
    void (*gomp_parallel)(void (*)(void *), void *, unsigned, unsigned);
    engine_t engine;
    stream_t stream;
    int loaded;
} dnnl;

typedef struct {
    int64_t m, n, k, lda, ldb, ldc;
    int transA, transB, type;
    float alpha, beta;
} key_t_;

// A cached product: a primitive for one shape with its memory objects, or a family's entry
// (key with m = k = 0: the same product at every m and k) holding how many of its shapes were
// new and, from FAMILY_RUNTIME_AFTER on, a primitive whose m and k are given at each call.
typedef struct {
    key_t_ key;
    primitive_t primitive;
    memory_t a, b, c;
    int used, misses;
} entry_t;

// A product whose rows change from call to call (the tokens routed to each expert, batches of
// other lengths) would create a primitive per call (0.4-0.9 ms, as long as the product itself):
// from its fourth new shape on, one primitive with run-time m and k serves them all. oneDNN 2.x
// runs those on its AVX-512 / AVX2 gemm, never on AMX: where bf16 products get AMX kernels, bf16
// families keep primitives per shape, with their varying rows rounded up (`run_amx`).
enum { CACHE_SLOTS = 1024, CACHE_LIMIT = 768, FAMILY_RUNTIME_AFTER = 4 };
static const int64_t RUNTIME_DIM = INT64_MIN;   // DNNL_RUNTIME_DIM_VAL
typedef struct { entry_t slots[CACHE_SLOTS]; int count; } cache_t;
static cache_t shared_cache;               // products on all threads, under `lock`
static _Thread_local cache_t *task_cache;  // products of one thread inside a parallel task
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local char lastImplementation[128] = "";
static _Thread_local char lastError[256] = "";

#define LOAD(field, name) do { \
    *(void **)&dnnl.field = dlsym(handle, name); \
    if (!dnnl.field) { snprintf(message, messageSize, "%s has no %s", path, name); dlclose(handle); return -2; } \
} while (0)

int finch_onednn_load(unsigned maxISA, char *message, size_t messageSize) {
    if (dnnl.loaded) return 0;
    const char *path = "libdnnl.so.2";
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(message, messageSize, "%s not found (apt-get install libdnnl2)", path);
        return -1;
    }
    LOAD(engine_create, "dnnl_engine_create");
    LOAD(stream_create, "dnnl_stream_create");
    LOAD(memory_desc_init_by_strides, "dnnl_memory_desc_init_by_strides");
    LOAD(matmul_desc_init, "dnnl_matmul_desc_init");
    LOAD(primitive_desc_create, "dnnl_primitive_desc_create");
    LOAD(primitive_desc_query, "dnnl_primitive_desc_query");
    LOAD(primitive_desc_destroy, "dnnl_primitive_desc_destroy");
    LOAD(primitive_create, "dnnl_primitive_create");
    LOAD(primitive_destroy, "dnnl_primitive_destroy");
    LOAD(primitive_execute, "dnnl_primitive_execute");
    LOAD(memory_create, "dnnl_memory_create");
    LOAD(memory_set_data_handle, "dnnl_memory_set_data_handle");
    LOAD(memory_destroy, "dnnl_memory_destroy");
    LOAD(stream_wait, "dnnl_stream_wait");
    LOAD(attr_create, "dnnl_primitive_attr_create");
    LOAD(attr_destroy, "dnnl_primitive_attr_destroy");
    LOAD(attr_set_output_scales, "dnnl_primitive_attr_set_output_scales");
    LOAD(attr_set_post_ops, "dnnl_primitive_attr_set_post_ops");
    LOAD(post_ops_create, "dnnl_post_ops_create");
    LOAD(post_ops_destroy, "dnnl_post_ops_destroy");
    LOAD(post_ops_append_sum, "dnnl_post_ops_append_sum");
    LOAD(set_max_cpu_isa, "dnnl_set_max_cpu_isa");
    LOAD(get_effective_cpu_isa, "dnnl_get_effective_cpu_isa");
    LOAD(version, "dnnl_version");
    // oneDNN's OpenMP runtime, for products that run on one thread inside Finch's own parallel tasks.
    void *gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (gomp) {
        *(void **)&dnnl.omp_set_num_threads = dlsym(gomp, "omp_set_num_threads");
        *(void **)&dnnl.omp_get_max_threads = dlsym(gomp, "omp_get_max_threads");
        *(void **)&dnnl.omp_get_thread_num = dlsym(gomp, "omp_get_thread_num");
        *(void **)&dnnl.omp_get_num_threads = dlsym(gomp, "omp_get_num_threads");
        *(void **)&dnnl.gomp_parallel = dlsym(gomp, "GOMP_parallel");   // what `#pragma omp parallel` compiles to
    }
    const version_t *v = dnnl.version();
    if (!v || v->major != 2) {
        snprintf(message, messageSize, "%s is oneDNN %d.%d; Finch's binding speaks the 2.x API", path, v ? v->major : 0, v ? v->minor : 0);
        dlclose(handle);
        return -3;
    }
    if (maxISA != 0 && dnnl.set_max_cpu_isa(maxISA) != 0) {
        snprintf(message, messageSize, "oneDNN refused the ISA limit %u", maxISA);
        dlclose(handle);
        return -4;
    }
    if (dnnl.engine_create(&dnnl.engine, ENGINE_CPU, 0) != 0 || dnnl.stream_create(&dnnl.stream, dnnl.engine, STREAM_IN_ORDER) != 0) {
        snprintf(message, messageSize, "oneDNN could not create its CPU engine");
        dlclose(handle);
        return -5;
    }
    dnnl.loaded = 1;
    return 0;
}

int finch_onednn_version(void) {
    if (!dnnl.loaded) return 0;
    const version_t *v = dnnl.version();
    return v->major * 10000 + v->minor * 100 + v->patch;
}

unsigned finch_onednn_effective_isa(void) { return dnnl.loaded ? dnnl.get_effective_cpu_isa() : 0; }
const char *finch_onednn_last_implementation(void) { return lastImplementation; }
const char *finch_onednn_last_error(void) { return lastError; }
int finch_onednn_cached_primitives(void) { return shared_cache.count; }

static uint64_t hash_key(const key_t_ *k) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)k;
    for (size_t i = 0; i < sizeof(*k); i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static void clear_cache(cache_t *cache) {
    for (int i = 0; i < CACHE_SLOTS; i++) {
        entry_t *e = &cache->slots[i];
        if (!e->used) continue;
        if (e->primitive) dnnl.primitive_destroy(e->primitive);
        if (e->a) dnnl.memory_destroy(e->a);
        if (e->b) dnnl.memory_destroy(e->b);
        if (e->c) dnnl.memory_destroy(e->c);
        memset(e, 0, sizeof *e);
    }
    cache->count = 0;
}

// A [rows, cols] matrix of element type dt, row-major with leading dimension ld, or its
// transpose (the same memory read column-major) when transposed.
static status_t describe(memory_desc_t *md, int64_t rows, int64_t cols, int64_t ld, int transposed, int dt) {
    dims_t dims = {rows, cols}, strides = {0};
    if (transposed) { strides[0] = 1; strides[1] = ld; } else { strides[0] = ld; strides[1] = 1; }
    return dnnl.memory_desc_init_by_strides(md, 2, dims, dt, strides);
}

// The matmul primitive for `key` (m and k of RUNTIME_DIM: given at each call); NULL if oneDNN has none.
static primitive_t make_primitive(const key_t_ *key) {
    int dt = key->type == FINCH_BF16 ? DT_BF16 : DT_F32;
    memory_desc_t a, b, c;
    matmul_desc_t op;
    memset(&a, 0, sizeof a); memset(&b, 0, sizeof b); memset(&c, 0, sizeof c); memset(&op, 0, sizeof op);
    if (describe(&a, key->m, key->k, key->lda, key->transA, dt) || describe(&b, key->k, key->n, key->ldb, key->transB, dt)
        || describe(&c, key->m, key->n, key->ldc, 0, DT_F32) || dnnl.matmul_desc_init(&op, &a, &b, NULL, &c)) {
        snprintf(lastError, sizeof lastError, "oneDNN rejected the matmul descriptor %lldx%lldx%lld",
                 (long long)key->m, (long long)key->n, (long long)key->k);
        return NULL;
    }
    attr_t attr = NULL;
    post_ops_t ops = NULL;
    if (dnnl.attr_create(&attr)) return NULL;
    if (key->alpha != 1) dnnl.attr_set_output_scales(attr, 1, 0, &key->alpha);
    if (key->beta != 0) {
        dnnl.post_ops_create(&ops);
        dnnl.post_ops_append_sum(ops, key->beta);
        dnnl.attr_set_post_ops(attr, ops);
    }
    primitive_desc_t pd = NULL;
    status_t s = dnnl.primitive_desc_create(&pd, &op, attr, dnnl.engine, NULL);
    dnnl.attr_destroy(attr);
    if (ops) dnnl.post_ops_destroy(ops);
    if (s != 0) {
        snprintf(lastError, sizeof lastError, "oneDNN has no matmul for %lldx%lldx%lld (%s, status %d)",
                 (long long)key->m, (long long)key->n, (long long)key->k, dt == DT_BF16 ? "bf16" : "f32", s);
        return NULL;
    }
    const char *impl = NULL;
    if (dnnl.primitive_desc_query(pd, QUERY_IMPL_INFO_STR, 0, &impl) == 0 && impl)
        snprintf(lastImplementation, sizeof lastImplementation, "%s", impl);
    primitive_t p = NULL;
    s = dnnl.primitive_create(&p, pd);
    dnnl.primitive_desc_destroy(pd);
    if (s != 0) { snprintf(lastError, sizeof lastError, "oneDNN could not create a matmul (status %d)", s); return NULL; }
    return p;
}

// The three memory objects of a product of `key`'s shape (data pointers set at each call).
static int make_memories(const key_t_ *key, memory_t *ma, memory_t *mb, memory_t *mc, void *a, void *b, void *c) {
    int dt = key->type == FINCH_BF16 ? DT_BF16 : DT_F32;
    memory_desc_t da, db, dc;
    memset(&da, 0, sizeof da); memset(&db, 0, sizeof db); memset(&dc, 0, sizeof dc);
    *ma = *mb = *mc = NULL;
    if (describe(&da, key->m, key->k, key->lda, key->transA, dt) || describe(&db, key->k, key->n, key->ldb, key->transB, dt)
        || describe(&dc, key->m, key->n, key->ldc, 0, DT_F32)
        || dnnl.memory_create(ma, &da, dnnl.engine, a) || dnnl.memory_create(mb, &db, dnnl.engine, b)
        || dnnl.memory_create(mc, &dc, dnnl.engine, c)) {
        if (*ma) dnnl.memory_destroy(*ma);
        if (*mb) dnnl.memory_destroy(*mb);
        snprintf(lastError, sizeof lastError, "oneDNN could not create memory objects");
        return -1;
    }
    return 0;
}

static entry_t *create(const key_t_ *key, entry_t *slot, cache_t *cache) {
    primitive_t p = make_primitive(key);
    if (!p) return NULL;
    memory_t ma = NULL, mb = NULL, mc = NULL;
    if (make_memories(key, &ma, &mb, &mc, NULL, NULL, NULL)) {
        dnnl.primitive_destroy(p);
        return NULL;
    }
    slot->key = *key;
    slot->primitive = p;
    slot->a = ma; slot->b = mb; slot->c = mc;
    slot->used = 1;
    cache->count++;
    return slot;
}

// The entry of `key` in `cache`, or NULL.
static entry_t *find(cache_t *cache, const key_t_ *key) {
    uint64_t h = hash_key(key);
    for (int probe = 0; probe < CACHE_SLOTS; probe++) {
        entry_t *slot = &cache->slots[(h + probe) % CACHE_SLOTS];
        if (!slot->used) return NULL;
        if (memcmp(&slot->key, key, sizeof *key) == 0) return slot;
    }
    return NULL;
}

// The empty slot where `key` goes (after emptying a cache that holds CACHE_LIMIT entries:
// many shapes, start afresh); NULL if there is none.
static entry_t *reserve(cache_t *cache, const key_t_ *key) {
    if (cache->count >= CACHE_LIMIT) clear_cache(cache);
    uint64_t h = hash_key(key);
    for (int probe = 0; probe < CACHE_SLOTS; probe++) {
        entry_t *slot = &cache->slots[(h + probe) % CACHE_SLOTS];
        if (!slot->used) return slot;
    }
    return NULL;
}

static status_t execute(entry_t *e, stream_t stream, const void *a, const void *b, float *c) {
    dnnl.memory_set_data_handle(e->a, (void *)a);
    dnnl.memory_set_data_handle(e->b, (void *)b);
    dnnl.memory_set_data_handle(e->c, c);
    exec_arg_t args[3] = {{ARG_SRC, e->a}, {ARG_WEIGHTS, e->b}, {ARG_DST, e->c}};
    status_t s = dnnl.primitive_execute(e->primitive, stream, 3, args);
    return s == 0 ? dnnl.stream_wait(stream) : s;
}

// A family's run-time-shape primitive on `key`'s m and k, with memory objects of this call.
static status_t execute_family(entry_t *f, stream_t stream, const key_t_ *key, const void *a, const void *b, float *c) {
    memory_t ma, mb, mc;
    if (make_memories(key, &ma, &mb, &mc, (void *)a, (void *)b, c)) return -1;
    exec_arg_t args[3] = {{ARG_SRC, ma}, {ARG_WEIGHTS, mb}, {ARG_DST, mc}};
    status_t s = dnnl.primitive_execute(f->primitive, stream, 3, args);
    if (s == 0) s = dnnl.stream_wait(stream);
    dnnl.memory_destroy(ma); dnnl.memory_destroy(mb); dnnl.memory_destroy(mc);
    return s;
}

static int dense_bf16_uses_amx(void);

// The family of `key`: the same product at every m and k. Where bf16 products run on AMX,
// `run_amx` hands `run` dense bf16 products only, whose strides follow from m, n and k (a
// transposed B's row length is k), so the family leaves them out too.
static key_t_ family_of(const key_t_ *key) {
    key_t_ family = *key;
    family.m = 0; family.k = 0;
    if (key->type == FINCH_BF16 && dense_bf16_uses_amx()) { family.lda = 0; family.ldb = 0; }
    return family;
}

// c = alpha op(a) op(b) + beta c through `cache`: the shape's own primitive when it has one;
// else its family's run-time-shape one once the family has seen FAMILY_RUNTIME_AFTER new shapes;
// else a new primitive for the shape. -2: oneDNN has no matmul for it.
static status_t run(cache_t *cache, stream_t stream, const key_t_ *key, const void *a, const void *b, float *c) {
    entry_t *e = find(cache, key);
    if (e) return execute(e, stream, a, b, c);
    key_t_ family = family_of(key);
    entry_t *f = find(cache, &family);
    if (!f && (f = reserve(cache, &family))) {
        memset(f, 0, sizeof *f);
        f->key = family; f->used = 1;
        cache->count++;
    }
    // (With AMX, bf16 products keep a primitive per shape: a run-time-shape one has no AMX
    // kernel; `run_amx` rounds the rows of such a family up instead.)
    if (f && !f->primitive && ++f->misses == FAMILY_RUNTIME_AFTER
        && !(key->type == FINCH_BF16 && dense_bf16_uses_amx())) {   // one try
        key_t_ runtime = *key;
        runtime.m = RUNTIME_DIM; runtime.k = RUNTIME_DIM;
        f->primitive = make_primitive(&runtime);
    }
    if (f && f->primitive) return execute_family(f, stream, key, a, b, c);
    e = reserve(cache, key);   // (may empty the cache: f is looked up again below)
    if (!e || !create(key, e, cache)) return -2;
    return execute(e, stream, a, b, c);
}

// MARK: Dense, row-rounded operands for AMX
//
// oneDNN 2.x runs a bf16 product on AMX (brgemm) only when its three matrices are dense (each
// leading dimension equal to the row length); a product with a strided operand (a slice of a
// wider matrix: attention's score blocks, dV and dK rows within the KV heads) goes to its
// gemm:jit, which has no AMX kernel and on such CPUs ran 5-10x slower than the AMX one (16x63
// .. 898x1536 outputs). And a product whose rows change from call to call (the tokens routed to
// each expert) would create an AMX primitive at nearly every call (0.4-0.9 ms each; 2362 in
// three MoE steps, 1.9 s), as the run-time-shape one has no AMX kernel. So where dense bf16
// products get AMX kernels, `run_amx` runs a product on dense copies of its strided operands,
// and once its family has met FAMILY_RUNTIME_AFTER new shapes, with the rows that vary (m, or
// k when A is transposed: a weight gradient's tokens) rounded up to a multiple of ROW_BUCKET
// with zeros; the product goes to a dense buffer and is added to C.
enum { ROW_BUCKET = 32 };

// 1 when oneDNN runs dense bf16 products on AMX here (within FINCH_ISA), 0 otherwise; -1 unknown.
static int amxProducts = -1;

static int dense_bf16_uses_amx(void) {
    if (amxProducts >= 0) return amxProducts;
    key_t_ probe;
    memset(&probe, 0, sizeof probe);
    probe.m = probe.n = probe.k = probe.lda = probe.ldb = probe.ldc = 64;
    probe.transB = 1; probe.type = FINCH_BF16; probe.alpha = 1;
    char saved[sizeof lastImplementation];
    memcpy(saved, lastImplementation, sizeof saved);
    primitive_t p = make_primitive(&probe);
    amxProducts = p && strstr(lastImplementation, "amx") != NULL;
    if (p) dnnl.primitive_destroy(p);
    memcpy(lastImplementation, saved, sizeof saved);
    return amxProducts;
}

int finch_onednn_amx_products(void) { return dnnl.loaded && dense_bf16_uses_amx(); }

typedef struct { void *pointer; size_t bytes; } dense_buffer_t;
static _Thread_local dense_buffer_t denseA, denseB, denseC;

static void *dense_reserve(dense_buffer_t *buffer, size_t bytes) {
    if (bytes > buffer->bytes) {
        free(buffer->pointer);
        buffer->pointer = aligned_alloc(64, (bytes + 63) / 64 * 64);
        buffer->bytes = buffer->pointer ? bytes : 0;
    }
    return buffer->pointer;
}

// rows x columns bf16 values from src (rows `ld` apart) into dst [paddedRows, paddedColumns],
// dense, zeros around.
static void copy_padded(uint16_t *dst, const uint16_t *src, int64_t rows, int64_t columns, int64_t ld,
                        int64_t paddedRows, int64_t paddedColumns) {
    for (int64_t r = 0; r < rows; r++) {
        memcpy(dst + r * paddedColumns, src + r * ld, (size_t)columns * 2);
        if (paddedColumns > columns) memset(dst + r * paddedColumns + columns, 0, (size_t)(paddedColumns - columns) * 2);
    }
    if (paddedRows > rows) memset(dst + rows * paddedColumns, 0, (size_t)((paddedRows - rows) * paddedColumns) * 2);
}

static int64_t round_up(int64_t x, int64_t step) { return (x + step - 1) / step * step; }

// `run`, for a bf16 product where dense bf16 products get AMX kernels: strided operands copied
// dense, and a varying family's rows rounded up (see above). -1: no memory for a copy.
static status_t run_amx(cache_t *cache, stream_t stream, const key_t_ *key, const void *a, const void *b, float *c) {
    if (key->type != FINCH_BF16 || !dense_bf16_uses_amx()) return run(cache, stream, key, a, b, c);
    int64_t aRows = key->transA ? key->k : key->m, aColumns = key->transA ? key->m : key->k;
    int64_t bRows = key->transB ? key->n : key->k, bColumns = key->transB ? key->k : key->n;
    key_t_ dense = *key;
    dense.lda = aColumns; dense.ldb = bColumns; dense.ldc = key->n;
    if (key->ldc != key->n) dense.beta = 0;   // (the product goes to a dense buffer)
    key_t_ family = family_of(&dense);
    entry_t *f;
    if (!find(cache, &dense) && (f = find(cache, &family)) && f->misses >= FAMILY_RUNTIME_AFTER) {
        if (key->transA) dense.k = round_up(key->k, ROW_BUCKET); else dense.m = round_up(key->m, ROW_BUCKET);
        dense.lda = key->transA ? dense.m : dense.k; dense.ldb = key->transB ? dense.k : key->n;
    }
    int64_t aRows2 = key->transA ? dense.k : dense.m, bRows2 = key->transB ? key->n : dense.k;
    if (key->lda != dense.lda || aRows2 != aRows) {
        uint16_t *copy = dense_reserve(&denseA, (size_t)(aRows2 * dense.lda) * 2);
        if (!copy) { snprintf(lastError, sizeof lastError, "out of memory for a dense copy"); return -1; }
        copy_padded(copy, a, aRows, aColumns, key->lda, aRows2, dense.lda);
        a = copy;
    }
    if (key->ldb != dense.ldb || bRows2 != bRows) {
        uint16_t *copy = dense_reserve(&denseB, (size_t)(bRows2 * dense.ldb) * 2);
        if (!copy) { snprintf(lastError, sizeof lastError, "out of memory for a dense copy"); return -1; }
        copy_padded(copy, b, bRows, bColumns, key->ldb, bRows2, dense.ldb);
        b = copy;
    }
    if (key->ldc == key->n && dense.m == key->m) return run(cache, stream, &dense, a, b, c);
    // alpha op(a) op(b) into a dense buffer, then c = its first m rows + beta c.
    float *out = dense_reserve(&denseC, (size_t)(dense.m * key->n) * 4);
    if (!out) { snprintf(lastError, sizeof lastError, "out of memory for a dense copy"); return -1; }
    dense.beta = 0;
    status_t s = run(cache, stream, &dense, a, b, out);
    if (s != 0) return s;
    const float beta = key->beta;
    for (int64_t r = 0; r < key->m; r++) {
        float *row = c + r * key->ldc;
        const float *product = out + r * key->n;
        if (beta == 0) memcpy(row, product, (size_t)key->n * 4);
        else if (beta == 1) for (int64_t j = 0; j < key->n; j++) row[j] += product[j];
        else for (int64_t j = 0; j < key->n; j++) row[j] = product[j] + beta * row[j];
    }
    return 0;
}

static int make_key(key_t_ *key, int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                    int64_t lda, int64_t ldb, int type, float beta, int64_t ldc) {
    if (!dnnl.loaded) { snprintf(lastError, sizeof lastError, "oneDNN is not loaded"); return -1; }
    if (m <= 0 || n <= 0 || k <= 0) { snprintf(lastError, sizeof lastError, "empty matmul"); return -1; }
    memset(key, 0, sizeof *key);          // padding too: the key is hashed and compared as bytes
    key->m = m; key->n = n; key->k = k; key->lda = lda; key->ldb = ldb; key->ldc = ldc;
    key->transA = transA != 0; key->transB = transB != 0; key->type = type; key->alpha = alpha; key->beta = beta;
    return 0;
}

int finch_onednn_matmul(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                        const void *a, int64_t lda, const void *b, int64_t ldb, int type, float beta,
                        float *c, int64_t ldc) {
    key_t_ key;
    if (make_key(&key, transA, transB, m, n, k, alpha, lda, ldb, type, beta, ldc)) return -1;
    pthread_mutex_lock(&lock);
    status_t s = run_amx(&shared_cache, dnnl.stream, &key, a, b, c);
    pthread_mutex_unlock(&lock);
    if (s == -2) return -2;
    if (s != 0) { snprintf(lastError, sizeof lastError, "oneDNN matmul failed (status %d)", s); return -3; }
    return 0;
}

// Each thread that runs products inside Finch's parallel tasks has its own primitives, memory
// objects and stream, so that they run concurrently; oneDNN's scratchpad is per thread.
static _Thread_local stream_t task_stream;

int finch_onednn_task_matmul(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                             const void *a, int64_t lda, const void *b, int64_t ldb, int type, float beta,
                             float *c, int64_t ldc) {
    key_t_ key;
    if (make_key(&key, transA, transB, m, n, k, alpha, lda, ldb, type, beta, ldc)) return -1;
    if (!dnnl.omp_set_num_threads || !dnnl.omp_get_max_threads) {
        snprintf(lastError, sizeof lastError, "libgomp's omp_set_num_threads was not found");
        return -1;
    }
    if (!task_cache) {
        task_cache = calloc(1, sizeof *task_cache);
        if (!task_cache) return -1;
    }
    if (!task_stream && dnnl.stream_create(&task_stream, dnnl.engine, STREAM_IN_ORDER) != 0) return -1;
    // This thread's OpenMP regions get one thread while it runs the product (the setting is the
    // calling thread's own), then whatever it had: Dispatch runs part of its loops on the caller.
    int before = dnnl.omp_get_max_threads();
    dnnl.omp_set_num_threads(1);
    status_t s = run_amx(task_cache, task_stream, &key, a, b, c);
    dnnl.omp_set_num_threads(before);
    if (s == -2) return -2;
    if (s != 0) return -3;
    return 0;
}

// f32 -> bf16 on oneDNN's OpenMP threads: they are the ones spinning between products, so
// handing them the conversion costs nothing, where other threads would fight them for the cores.
typedef struct { const float *src; size_t ld; uint16_t *dst; size_t rows, columns; } convert_job_t;

static void convert_part(void *data) {
    const convert_job_t *job = data;
    size_t part = (size_t)dnnl.omp_get_thread_num(), parts = (size_t)dnnl.omp_get_num_threads();
    size_t start = job->rows * part / parts, end = job->rows * (part + 1) / parts;
    if (start < end) finch_f32_to_bf16_rows(job->src + start * job->ld, job->ld, job->dst + start * job->columns, end - start, job->columns);
}

void finch_onednn_to_bf16_rows(const float *src, size_t ld, uint16_t *dst, size_t rows, size_t columns) {
    int threads = dnnl.gomp_parallel && dnnl.omp_get_thread_num && dnnl.omp_get_num_threads ? dnnl.omp_get_max_threads() : 1;
    if (threads <= 1 || rows < 2 || rows * columns < 65536) { finch_f32_to_bf16_rows(src, ld, dst, rows, columns); return; }
    convert_job_t job = { src, ld, dst, rows, columns };
    dnnl.gomp_parallel(convert_part, &job, (unsigned)threads, 0);
}
