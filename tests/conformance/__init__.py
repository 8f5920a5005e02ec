"""Huawei's own SDK against the simulator: every request and answer shape snapworker relies on."""
