from regbench.report.command import main

main()
