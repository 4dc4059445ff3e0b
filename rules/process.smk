rule process_measurement_sets:
    input:
        specification=get_batch_specification_file,
    output:
        batch=batch_marker("{batch}"),
        table=report(
            report_files("{batch}")["table"],
            caption="../report/summary_tsv.rst",
            category="Summary",
            labels={"table": "all MSs (TSV download)"},
        ),
        html=report(
            report_files("{batch}")["html"],
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "all MSs"},
        ),
        flagged=report(
            report_files("{batch}")["flagged"],
            caption="../report/flagged_fraction.rst",
            category="Plots",
            labels={"plot": "flagged fraction"},
        ),
        spectrum=report(
            report_files("{batch}")["spectrum"],
            caption="../report/rfi_spectrum.rst",
            category="Plots",
            labels={"plot": "RFI spectrum"},
        ),
        stations=report(
            report_files("{batch}")["stations"],
            caption="../report/flagged_per_station.rst",
            category="Plots",
            labels={"plot": "flagged per station"},
        ),
        durations=report(
            report_files("{batch}")["durations"],
            caption="../report/duration.rst",
            category="Plots",
            labels={"plot": "duration"},
        ),
        step_times=report(
            report_files("{batch}")["step_times"],
            caption="../report/step_time.rst",
            category="Plots",
            labels={"plot": "DP3 step time"},
        ),
        flagging=report(
            directory(report_files("{batch}")["flagging"]),
            patterns=["{ms}_flagging_report.png"],
            caption="../report/flagging_report.rst",
            category="Flagging reports",
            labels={"MS": "{ms}"},
        ),
        dask=report(
            report_files("{batch}")["dask"],
            caption="../report/dask.rst",
            category="dask",
            labels={"report": "dask performance report"},
        ),
    log:
        batch_log("{batch}"),
    conda:
        "../envs/dp3.yaml"
    shell:
        CENTRAL_JOB_SHELL
