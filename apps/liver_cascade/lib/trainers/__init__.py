def make_trainer(name, model_dir, app_conf, conf):
    raise NotImplementedError("trainers land in the next commit")
