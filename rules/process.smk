rule process_measurement_sets:
    output:
        batch=batch_marker("{batch}"),
    log:
        batch_log("{batch}"),
    conda:
        "../envs/dp3.yaml"
    params:
        batch=get_batch_specification,
    script:
        "../scripts/process_batch.py"
