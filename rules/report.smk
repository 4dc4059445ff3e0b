# Beside report_files: the summary table as HTML, and dask's own performance report of the
# batch (moved there from the file the batch wrote).
SUMMARY_HTML = str(
    Path(report_files("{report_batch}")["table"]).with_name("summary.html")
)
DASK_REPORT = str(
    Path(report_files("{report_batch}")["table"]).with_name("dask-report.html")
)


rule make_report:
    input:
        batch=batch_marker("{report_batch}"),
    output:
        table=report(
            report_files("{report_batch}")["table"],
            caption="../report/summary_tsv.rst",
            category="Summary",
            labels={"table": "all MSs (TSV download)"},
        ),
        html=report(
            SUMMARY_HTML,
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "all MSs"},
        ),
        flagged=report(
            report_files("{report_batch}")["flagged"],
            caption="../report/flagged_fraction.rst",
            category="Plots",
            labels={"plot": "flagged fraction"},
        ),
        durations=report(
            report_files("{report_batch}")["durations"],
            caption="../report/duration.rst",
            category="Plots",
            labels={"plot": "duration"},
        ),
        step_times=report(
            report_files("{report_batch}")["step_times"],
            caption="../report/step_time.rst",
            category="Plots",
            labels={"plot": "DP3 step time"},
        ),
        dask=report(
            DASK_REPORT,
            caption="../report/dask.rst",
            category="dask",
            labels={"report": "dask performance report"},
        ),
    log:
        batch_log("{report_batch}", "report"),
    conda:
        "../envs/dp3.yaml"
    params:
        measurement_sets=all_measurement_sets(),
    script:
        "../scripts/make_report.py"
