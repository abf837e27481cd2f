from cac_align.cli import main

raise SystemExit(main())
