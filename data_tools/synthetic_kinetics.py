"""Generate the synthetic Kinetics-format dataset: `python -m data_tools.synthetic_kinetics OUT ...`.

The same as `spatiotemporal prepare synthetic-kinetics`; the generator is
`spatiotemporal.data.synthetic_kinetics`.
"""

import sys

from spatiotemporal.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "synthetic-kinetics", *sys.argv[1:]]))
