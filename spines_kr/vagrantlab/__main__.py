"""python3 -m spines_kr.vagrantlab ...: the same as spines-kr vagrant ..."""

import sys

from spines_kr.vagrantlab.cli import main

sys.exit(main())
