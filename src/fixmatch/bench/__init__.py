"""`python -m fixmatch.bench data|step|train`: throughput of the data pipeline and the training
step, side by side with a straightforward implementation of the kind the popular PyTorch
port uses (`fixmatch.bench.port`), in one run because machine speed drifts."""
