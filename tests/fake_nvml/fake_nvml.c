/*
 * fake_nvml.c -- a stand-in for libnvidia-ml.so.1, built by the test suite (tests/fixtures_nvml.py).
 *
 * Why a fake: the machines that run these tests have no NVIDIA GPU and no driver, so the real
 * library cannot exist there. The real `pynvml` (nvidia-ml-py) loads this file through
 * dlopen("libnvidia-ml.so.1") when its directory is on LD_LIBRARY_PATH, exactly as it loads the
 * real one; only the values are canned.
 *
 * Build (the soname matters: glibc matches a later dlopen("libnvidia-ml.so.1") by DT_SONAME):
 *   gcc -shared -fPIC -O2 -Wall -Wextra -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c
 * Add -DFAKE_NVML_OLD_DRIVER to leave out the symbols an old driver lacks
 * (nvmlSystemGetCudaDriverVersion_v2 and the *_v3 process queries).
 *
 * Every value is read from the environment AT CALL TIME (getenv), so one build serves every test.
 * System-wide knobs:
 *   FAKE_NVML_INIT_RC          nvmlInit* return code (9 DRIVER_NOT_LOADED, 18 LIB_RM_VERSION_MISMATCH, 999 UNKNOWN)
 *   FAKE_NVML_INIT_DELAY_MS    nvmlInit* sleeps this long first (a wedged driver)
 *   FAKE_NVML_INIT_LOG         append one line per nvmlInit* call to this file (tests count NVML probes)
 *   FAKE_NVML_DRIVER_VERSION   "575.57.08"
 *   FAKE_NVML_CUDA_VERSION     1000*major + 10*minor, e.g. 12090 for 12.9
 *   FAKE_NVML_CUDA_V2_RC       return code of nvmlSystemGetCudaDriverVersion_v2 (12 LIBRARY_NOT_FOUND:
 *                              libcuda.so.1 missing); the plain call still answers, as NVML documents
 *   FAKE_NVML_GPU_COUNT        number of GPUs (default 1)
 *   FAKE_NVML_UNSUPPORTED      comma list of function names that return NOT_SUPPORTED (3)
 * Per-GPU knobs: FAKE_NVML_<KEY>_<index> wins over FAKE_NVML_<KEY> (e.g. FAKE_NVML_GPU_NAME_1):
 *   GPU_NAME, UUID, MEM_TOTAL, MEM_USED, MEM_RESERVED (bytes), CC ("8.9"), BUS_WIDTH (bits),
 *   MAX_MEM_CLOCK, MAX_SM_CLOCK (MHz), PCIE_GEN, PCIE_WIDTH, POWER_MW, POWER_LIMIT_MW, TEMP_C,
 *   PROCS (compute) and GFX_PROCS (graphics): "pid:bytes[:name],..."; bytes "-" means not available,
 *   UNSUPPORTED (as above, for this GPU only).
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEV 16
#define MAX_PROCS 64
typedef struct fake_device { unsigned index; } *nvmlDevice_t;   /* opaque to callers */
static struct fake_device g_devs[MAX_DEV];
static int g_init_count = 0;

/* nvmlMemory_t: 3 x unsigned long long (24 bytes). */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
/* nvmlMemory_v2_t: version, then 4 x ull (40 bytes); nvmlMemory_v2 = size | 2 << 24 = 0x02000028. */
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define NVML_MEMORY_V2 ((unsigned)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
/* nvmlProcessInfo_t of the *_v3 process queries (24 bytes, usedGpuMemory at offset 8). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;
/* nvmlTemperature_v1_t: 12 bytes, version 0x0100000C. */
typedef struct { unsigned int version; int sensorType; int temperature; } nvmlTemperature_v1_t;

/* ---- environment helpers ---- */
static const char *env_s(const char *key, const char *dflt) {
    const char *v = getenv(key);
    return (v && *v) ? v : dflt;
}
static unsigned long long env_u(const char *key, unsigned long long dflt) {
    const char *v = getenv(key);
    return (v && *v) ? strtoull(v, NULL, 0) : dflt;
}
/* FAKE_NVML_<key>_<index>, else FAKE_NVML_<key>, else dflt. */
static const char *dev_s(unsigned idx, const char *key, const char *dflt) {
    char name[96];
    snprintf(name, sizeof name, "FAKE_NVML_%s_%u", key, idx);
    const char *v = getenv(name);
    if (v && *v) return v;
    snprintf(name, sizeof name, "FAKE_NVML_%s", key);
    return env_s(name, dflt);
}
static unsigned long long dev_u(unsigned idx, const char *key, unsigned long long dflt) {
    const char *v = dev_s(idx, key, NULL);
    return v ? strtoull(v, NULL, 0) : dflt;
}
static int listed(const char *list, const char *fn) {
    if (!list) return 0;
    size_t n = strlen(fn);
    for (const char *p = list; (p = strstr(p, fn)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
            return 1;
    return 0;
}
static int unsupported(const char *fn) { return listed(getenv("FAKE_NVML_UNSUPPORTED"), fn); }
static int dev_unsupported(unsigned idx, const char *fn) {
    return listed(dev_s(idx, "UNSUPPORTED", NULL), fn);
}
static unsigned gpu_count(void) {
    unsigned long long n = env_u("FAKE_NVML_GPU_COUNT", 1);
    return n > MAX_DEV ? MAX_DEV : (unsigned)n;
}

#define CHECK_INIT() do { if (g_init_count <= 0) return NVML_ERROR_UNINITIALIZED; } while (0)
#define CHECK_SUPPORTED() do { if (unsupported(__func__)) return NVML_ERROR_NOT_SUPPORTED; } while (0)
#define CHECK_DEV(d) do {                                                           \
        CHECK_INIT();                                                               \
        if (!((d) >= &g_devs[0] && (d) < &g_devs[MAX_DEV] && (d)->index < gpu_count())) \
            return NVML_ERROR_INVALID_ARGUMENT;                                     \
        if (dev_unsupported((d)->index, __func__)) return NVML_ERROR_NOT_SUPPORTED; \
    } while (0)

static nvmlReturn_t copy_str(char *buf, unsigned len, const char *s) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, s);
    return NVML_SUCCESS;
}

/* ---- init / shutdown / errors ---- */
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *log = getenv("FAKE_NVML_INIT_LOG");
    if (log && *log) {
        FILE *f = fopen(log, "a");
        if (f) { fputs("nvmlInit\n", f); fclose(f); }
    }
    unsigned long long delay = env_u("FAKE_NVML_INIT_DELAY_MS", 0);
    if (delay) usleep((useconds_t)(delay * 1000));
    int rc = (int)env_u("FAKE_NVML_INIT_RC", 0);
    if (rc) return rc;
    for (unsigned i = 0; i < MAX_DEV; i++) g_devs[i].index = i;
    g_init_count++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    CHECK_INIT();
    g_init_count--;
    return NVML_SUCCESS;
}
const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

/* ---- system ---- */
nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int len) {
    CHECK_INIT(); CHECK_SUPPORTED();
    return copy_str(v, len, env_s("FAKE_NVML_DRIVER_VERSION", "575.57.08"));
}
nvmlReturn_t nvmlSystemGetNVMLVersion(char *v, unsigned int len) {
    CHECK_INIT(); CHECK_SUPPORTED();
    /* real NVML reports "<cuda major>.<driver version>", e.g. "12.575.57.08" */
    char buf[96];
    snprintf(buf, sizeof buf, "%llu.%s", env_u("FAKE_NVML_CUDA_VERSION", 12090) / 1000,
             env_s("FAKE_NVML_DRIVER_VERSION", "575.57.08"));
    return copy_str(v, len, buf);
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    CHECK_INIT(); CHECK_SUPPORTED();
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = (int)env_u("FAKE_NVML_CUDA_VERSION", 12090);
    return NVML_SUCCESS;
}
#ifndef FAKE_NVML_OLD_DRIVER
/* _v2 asks libcuda.so.1 itself; FAKE_NVML_CUDA_V2_RC=12 plays "libcuda missing". */
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    CHECK_INIT(); CHECK_SUPPORTED();
    int rc = (int)env_u("FAKE_NVML_CUDA_V2_RC", 0);
    if (rc) return rc;
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = (int)env_u("FAKE_NVML_CUDA_VERSION", 12090);
    return NVML_SUCCESS;
}
#endif
nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int len) {
    CHECK_INIT(); CHECK_SUPPORTED();
    /* the name given in PROCS/GFX_PROCS of any GPU, else "fake-proc-<pid>" */
    char key[32], buf[256];
    snprintf(buf, sizeof buf, "fake-proc-%u", pid);
    snprintf(key, sizeof key, "%u:", pid);
    for (unsigned i = 0; i < gpu_count(); i++) {
        const char *lists[2] = {dev_s(i, "PROCS", ""), dev_s(i, "GFX_PROCS", "")};
        for (int k = 0; k < 2; k++) {
            for (const char *p = lists[k]; p && *p; ) {
                if (strncmp(p, key, strlen(key)) == 0) {
                    const char *q = strchr(p + strlen(key), ':');
                    const char *end = strchr(p, ',');
                    if (q && (!end || q < end)) {
                        size_t n = (size_t)((end ? end : q + strlen(q)) - (q + 1));
                        if (n >= sizeof buf) n = sizeof buf - 1;
                        memcpy(buf, q + 1, n);
                        buf[n] = 0;
                    }
                    return copy_str(name, len, buf);
                }
                p = strchr(p, ',');
                if (p) p++;
            }
        }
    }
    return copy_str(name, len, buf);
}

/* ---- device enumeration ---- */
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    CHECK_INIT(); CHECK_SUPPORTED();
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = gpu_count();
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    CHECK_INIT(); CHECK_SUPPORTED();
    if (!d || i >= gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &g_devs[i];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) {
    return nvmlDeviceGetHandleByIndex_v2(i, d);
}

/* ---- device properties ---- */
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int len) {
    CHECK_DEV(d);
    return copy_str(name, len, dev_s(d->index, "GPU_NAME", "NVIDIA GeForce RTX 4060 Laptop GPU"));
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int len) {
    CHECK_DEV(d);
    char buf[96];
    snprintf(buf, sizeof buf, "GPU-00000000-0000-0000-0000-%012u", d->index);
    return copy_str(uuid, len, dev_s(d->index, "UUID", buf));
}
static unsigned long long mem_total(unsigned i) { return dev_u(i, "MEM_TOTAL", 8585740288ULL); }
static unsigned long long mem_used(unsigned i) { return dev_u(i, "MEM_USED", 0); }
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    CHECK_DEV(d);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    /* v1 folds the driver's reservation into "used", as real NVML does */
    m->total = mem_total(d->index);
    m->used = mem_used(d->index) + dev_u(d->index, "MEM_RESERVED", 0);
    m->free = m->total > m->used ? m->total - m->used : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    CHECK_DEV(d);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = mem_total(d->index);
    m->reserved = dev_u(d->index, "MEM_RESERVED", 0);
    m->used = mem_used(d->index);
    unsigned long long taken = m->reserved + m->used;
    m->free = m->total > taken ? m->total - taken : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    CHECK_DEV(d);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    int a = 8, b = 9;
    sscanf(dev_s(d->index, "CC", "8.9"), "%d.%d", &a, &b);
    *major = a;
    *minor = b;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryBusWidth(nvmlDevice_t d, unsigned int *w) {
    CHECK_DEV(d);
    if (!w) return NVML_ERROR_INVALID_ARGUMENT;
    *w = (unsigned)dev_u(d->index, "BUS_WIDTH", 128);
    return NVML_SUCCESS;
}
/* nvmlClockType_t: 0 GRAPHICS, 1 SM, 2 MEM, 3 VIDEO */
nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
    CHECK_DEV(d);
    if (!mhz) return NVML_ERROR_INVALID_ARGUMENT;
    switch (type) {
    case 0: case 1: *mhz = (unsigned)dev_u(d->index, "MAX_SM_CLOCK", 3105); break;
    case 2: *mhz = (unsigned)dev_u(d->index, "MAX_MEM_CLOCK", 8001); break;
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
    return nvmlDeviceGetMaxClockInfo(d, type, mhz);
}
nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t d, unsigned int *g) {
    CHECK_DEV(d); if (!g) return NVML_ERROR_INVALID_ARGUMENT;
    *g = (unsigned)dev_u(d->index, "PCIE_GEN", 4); return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t d, unsigned int *g) {
    return nvmlDeviceGetMaxPcieLinkGeneration(d, g);
}
nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t d, unsigned int *w) {
    CHECK_DEV(d); if (!w) return NVML_ERROR_INVALID_ARGUMENT;
    *w = (unsigned)dev_u(d->index, "PCIE_WIDTH", 8); return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t d, unsigned int *w) {
    return nvmlDeviceGetMaxPcieLinkWidth(d, w);
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    CHECK_DEV(d); if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = (unsigned)dev_u(d->index, "POWER_MW", 12000); return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) {
    CHECK_DEV(d); if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
    *mw = (unsigned)dev_u(d->index, "POWER_LIMIT_MW", 115000); return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t d, unsigned int *mw) {
    return nvmlDeviceGetEnforcedPowerLimit(d, mw);
}
/* nvmlTemperatureSensors_t: 0 == NVML_TEMPERATURE_GPU */
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *t) {
    CHECK_DEV(d);
    if (sensor != 0 || !t) return NVML_ERROR_INVALID_ARGUMENT;
    *t = (unsigned)dev_u(d->index, "TEMP_C", 45);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_v1_t *t) {
    CHECK_DEV(d);
    if (!t) return NVML_ERROR_INVALID_ARGUMENT;
    if (t->version != (unsigned)(sizeof *t | (1u << 24))) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (t->sensorType != 0) return NVML_ERROR_INVALID_ARGUMENT;
    t->temperature = (int)dev_u(d->index, "TEMP_C", 45);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OLD_DRIVER
/* "pid:bytes[:name],..." -> entries; bytes "-" is NVML's "not available" (ULLONG_MAX). */
static unsigned parse_procs(const char *spec, nvmlProcessInfo_t *out) {
    unsigned n = 0;
    const char *p = spec;
    while (p && *p && n < MAX_PROCS) {
        char *end;
        unsigned long pid = strtoul(p, &end, 10);
        if (end == p || *end != ':') break;
        p = end + 1;
        unsigned long long mem;
        if (*p == '-') { mem = ULLONG_MAX; p++; }
        else { mem = strtoull(p, &end, 10); if (end == p) break; p = end; }
        out[n].pid = (unsigned)pid;
        out[n].usedGpuMemory = mem;
        out[n].gpuInstanceId = 0xFFFFFFFFu;
        out[n].computeInstanceId = 0xFFFFFFFFu;
        n++;
        p = strchr(p, ',');   /* skip an optional ":name" */
        if (p) p++;
    }
    return n;
}
/* Two-call protocol used by pynvml: (count=0, NULL) -> SUCCESS if none, else INSUFFICIENT_SIZE
 * with *count = n; the second call fills up to *count entries. */
static nvmlReturn_t procs_query(const char *spec, unsigned int *count, nvmlProcessInfo_t *infos) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlProcessInfo_t tmp[MAX_PROCS];
    unsigned n = parse_procs(spec, tmp);
    if (n == 0) { *count = 0; return NVML_SUCCESS; }
    if (!infos || *count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    memcpy(infos, tmp, n * sizeof *infos);
    *count = n;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                    nvmlProcessInfo_t *infos) {
    CHECK_DEV(d); CHECK_SUPPORTED();
    return procs_query(dev_s(d->index, "PROCS", ""), count, infos);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    CHECK_DEV(d); CHECK_SUPPORTED();
    return procs_query(dev_s(d->index, "GFX_PROCS", ""), count, infos);
}
#endif
