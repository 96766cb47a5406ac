"""``python -m vision_sae_lens`` (also what ``torchrun -m vision_sae_lens cache ...`` runs)."""

import sys

from vision_sae_lens.cli import main

sys.exit(main())
