"""Batches of notebook executions: batch files, the runner, resume keys, kernels, the job
type and the executors that run it. Knows nothing about models."""
