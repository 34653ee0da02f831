"""Load test a running `ddit-export serve` deployment over loopback (ddit_export/serve/load_test.py).

    python tools/load_test.py --url http://127.0.0.1:8000 --engines engines/demo -n 200 -c 8
"""

import sys

from ddit_export.serve.load_test import main

if __name__ == "__main__":
    sys.exit(main())
