"""How long does one CIFAR ResNet-32 training step take here? (the cost line of docs/reproduce.md)

Times a stage-1 step (forward, backward, SGD update) of the PI-H2T ResNet-32 on a random CIFAR-shaped batch,
after warm-up, and extrapolates to the 200 x 84 steps of the CIFAR-100-LT IF 100 stage 1 (data loading and
augmentation not included). Prints the median of --repeats steps, the CPU and the thread count.

    python benchmarks/cifar_step_time.py --batch 128 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.models import NetworkConfig, PIH2TNet

STAGE1_STEPS = 200 * (10847 // 128)  # epochs x steps per epoch (the last partial batch is dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = PIH2TNet(NetworkConfig(arch="resnet32", num_classes=100, method="pih2t")).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 100, (args.batch,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"machine: {cpu_info()}, {torch.get_num_threads()} threads, device {device}")
    print(f"one ResNet-32 stage-1 step at batch {args.batch}: median {median:.3f} s over {args.repeats}")
    print(f"stage 1 of CIFAR-100-LT IF 100 ({STAGE1_STEPS} steps), compute only: {STAGE1_STEPS * median / 3600:.1f} h")


if __name__ == "__main__":
    main()
