"""DP3 itself: the typed parameters and their translation from the steps, the text forms DP3
reads, finding and running DP3, its log, H5Parm reading, and DP3's own check of the keys."""
