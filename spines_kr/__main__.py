from spines_kr.cli import main

raise SystemExit(main())
