"""Image-folder start-up time: the first load (decode every file, write the cache) against a
cached load (list the folder, memory-map the array).

Each load runs in a fresh process, as a real start does. The first load starts from no
cache: this setting's files in `<root>/.fixmatch_cache/` (and in the user cache folder)
are deleted first; they are rebuilt by that load.

    tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10jpeg
    python benchmarks/image_folder_cache.py /tmp/cifar10jpeg [--image-size 32 --channels 3]
"""

import argparse
import subprocess
import sys
from pathlib import Path

from fixmatch.data.image_cache import ImageCache

LOAD = """
import sys, time
from fixmatch.config import DatasetConfig, Resize
from fixmatch.data.datasets import load_dataset
root, size, channels, resize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = DatasetConfig(name="folder", root=root, download=False, num_classes=0, channels=channels,
                       image_size=size, resize=Resize(resize))
start = time.perf_counter()
arrays = load_dataset(config)
seconds = time.perf_counter() - start
count = len(arrays.train.targets) + len(arrays.test.targets)
count += 0 if arrays.unlabeled is None else len(arrays.unlabeled)
print(f"{seconds:.2f} {count}")
"""


def timed_load(root: Path, args: argparse.Namespace) -> tuple:
    """(seconds inside load_dataset, number of images) of one load in a new process."""
    command = [sys.executable, "-c", LOAD, str(root), str(args.image_size), str(args.channels),
               args.resize]
    seconds, count = subprocess.run(command, capture_output=True, text=True,
                                    check=True).stdout.split()
    return float(seconds), int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a folder in the labeled/ or train/ layout")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--resize", default="resize", choices=["resize", "center_crop", "none"])
    parser.add_argument("--cached-runs", type=int, default=3)
    args = parser.parse_args()
    root = args.root.expanduser().resolve()
    tag = f"{args.image_size}px-{args.channels}ch-{args.resize}"  # image_folder.Preprocessing.tag
    for folder in ImageCache(root, tag).folders:
        for path in folder.glob(f"{tag}-*.*"):
            path.unlink()
    first, count = timed_load(root, args)
    cached = [timed_load(root, args)[0] for _ in range(args.cached_runs)]
    print(f"{count} images of {root} at {args.image_size} px, {args.channels} channel(s), "
          f"{args.resize}")
    print(f"first load (decode, write the cache): {first:.2f} s")
    print(f"cached load: {min(cached):.2f} s (best of {len(cached)}: "
          f"{', '.join(f'{s:.2f}' for s in cached)})")


if __name__ == "__main__":
    main()
