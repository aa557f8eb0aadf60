"""Training on Ray Train: `loop.fit(config)` runs `loop.train_loop_per_worker` on a TorchTrainer.

config.py (YAML + overrides), optim.py (AdamW/SGD, layer-wise decay, cosine warmup), ema.py,
sampler.py (resumable order), checkpoint.py, logs.py (JSONL, TensorBoard, curves PNG),
tasks.py (video classification, point segmentation), ray_env.py (what `fit` sets in Ray's runtime
environment), demo.py (the short end-to-end run).
"""
