"""`python -m krmini.train …` = `krmini train …`; what torchrun runs on each rank:

    torchrun --nproc_per_node=2 -m krmini.train --config small --data runs/ko/data
"""

from krmini.train.cli import main

raise SystemExit(main())
