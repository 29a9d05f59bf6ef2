"""SAELens' side of the SAE-training benchmark: its own SAETrainer on a StandardTrainingSAE
of the seed's shape (d_in 64, d_sae 4096), fed shuffled batches of the activations qexp
cached in bench/.data/acts.npy, the same hyperparameters as bench/sae_train.rs, the same
thread count. Prints one JSON object with the seconds `fit()` took."""

import json
import sys
import time

import numpy as np
import torch
from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.config import SAETrainerConfig


def main():
    tokens, batch_size, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    acts = torch.from_numpy(np.load("bench/.data/acts.npy"))
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=64, d_sae=4096, l1_coefficient=2.0, device="cpu"))
    steps = tokens // batch_size

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:
            order = torch.randperm(len(acts), generator=generator)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield acts[order[i : i + batch_size]]

    cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=2e-3,
        lr_end=2e-3,
        lr_warm_up_steps=max(steps // 20, 1),
        device="cpu",
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    print(json.dumps({"saelens_seconds": seconds, "tokens": steps * batch_size, "batch_size": batch_size}))


if __name__ == "__main__":
    main()
