"""Studies made of many training runs, such as the ablation of CLCA and CLSA."""
