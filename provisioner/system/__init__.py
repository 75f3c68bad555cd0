"""The machine: NVML facts, the distribution, GPU architectures, driver/CUDA compatibility."""
