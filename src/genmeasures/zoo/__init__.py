"""Model zoos: train populations of networks, store them, resume (Jiang et al. 2020, §2)."""
