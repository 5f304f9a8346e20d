from hooks_mm.analysis.findings import main

main()
