"""The tuner's parts: trial isolation (trials), the batch-size search (batch_size) and the learning-rate range test (lr_finder)."""
