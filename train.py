"""Fine-tune: `python train.py --config jaxft/configs/default.py --workdir DIR [--config.KEY=VALUE ...]`.

The flags and their handling live in `jaxft/main.py` (also installed as `jaxft-train`); `--help` lists them.
"""

from jaxft.main import run

if __name__ == "__main__":
    run()
