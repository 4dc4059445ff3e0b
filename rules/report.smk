rule make_report:
    input:
        batch=batch_marker("{report_batch}"),
    output:
        table=report(
            report_files("{report_batch}")["table"],
            category="Summary",
            labels={"table": "all MSs"},
        ),
        flagged=report(
            report_files("{report_batch}")["flagged"],
            category="Plots",
            labels={"plot": "flagged fraction"},
        ),
        durations=report(
            report_files("{report_batch}")["durations"],
            category="Plots",
            labels={"plot": "duration"},
        ),
        step_times=report(
            report_files("{report_batch}")["step_times"],
            category="Plots",
            labels={"plot": "DP3 step time"},
        ),
    log:
        batch_log("{report_batch}", "report"),
    conda:
        "../envs/dp3.yaml"
    params:
        measurement_sets=all_measurement_sets(),
    script:
        "../scripts/make_report.py"
