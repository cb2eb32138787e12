"""Byte units, said explicitly: MiB is 2**20 bytes, MB is 10**6 (as DeepSpeed's estimators,
GPU spec sheets and link bandwidths count). A name here always means the same number."""
KiB, MiB, GiB = 2**10, 2**20, 2**30
KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
