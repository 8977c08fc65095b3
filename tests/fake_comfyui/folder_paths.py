"""The fake's stand-in for ComfyUI's `folder_paths` module: the part extensions call.

Same names and behaviour as ComfyUI 0.3.64's for the folders of outputs, inputs, temp
files and user data (set_*_directory / get_*_directory / get_directory_by_type) and for
`get_folder_paths("custom_nodes")`. main.py calls `init` with the base directory; the
comfyhub extension calls the setters when an instance is bound to a project.
"""

from __future__ import annotations

import os

output_directory = ""
temp_directory = ""
input_directory = ""
user_directory = ""
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def init(base_path: str) -> None:
    global output_directory, temp_directory, input_directory, user_directory
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    user_directory = os.path.join(base_path, "user")
    folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths = folder_names_and_paths.setdefault(folder_name, ([], set()))[0]
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths.get(folder_name, ([], set()))[0])


def set_output_directory(output_dir: str) -> None:
    global output_directory
    output_directory = output_dir


def set_temp_directory(temp_dir: str) -> None:
    global temp_directory
    temp_directory = temp_dir


def set_input_directory(input_dir: str) -> None:
    global input_directory
    input_directory = input_dir


def set_user_directory(user_dir: str) -> None:
    global user_directory
    user_directory = user_dir


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def get_user_directory() -> str:
    return user_directory


def get_directory_by_type(type_name: str) -> str | None:
    if type_name == "output":
        return get_output_directory()
    if type_name == "temp":
        return get_temp_directory()
    if type_name == "input":
        return get_input_directory()
    return None
