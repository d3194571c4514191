// These tests start servers and train models for seconds each; run them one at a time so that their timing does not
// depend on each other.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
