"""Re-encode a downloaded Kinetics tree: `python -m data_tools.prepare_kinetics SRC OUT ...`.

The same as `spatiotemporal prepare kinetics`.
"""

import sys

from spatiotemporal.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "kinetics", *sys.argv[1:]]))
