"""dit-sample: 07's diffusion-sample on a DiT run: every sampler, classifier-free guidance (07's own), the
reverse-process GIF, --npz for genlab-eval, latent runs decoded by their first stage.

uv run dit-sample --run runs/dit/<run>                                # DDIM, 50 steps: samples.png
uv run dit-sample --run R --sampler ddpm --steps 250 --guidance-scale 1.5 --npz 10000   # DiT's evaluation setting
"""

from __future__ import annotations

from functools import partial

from genlab.core.harness import console_script
from genlab.diffusion.sample import DiffusionSampleConfig
from genlab.diffusion.sample import sample as diffusion_sample
from genlab.dit.model import DiT
from genlab.dit.train import PROJECT

main = console_script(DiffusionSampleConfig, partial(diffusion_sample, model_class=DiT, name="dit", project=PROJECT),
                      "dit-sample")  # fmt: skip

if __name__ == "__main__":
    main()
