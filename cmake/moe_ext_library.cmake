# The op library target. Sources are globbed (CONFIGURE_DEPENDS), so a new op family in
# csrc/cpu/<family>.cpp or csrc/cuda/<family>.cu is built without editing any CMake file.

function(moe_ext_add_library target)
  set(_root "${PROJECT_SOURCE_DIR}")
  file(GLOB _cpu_sources CONFIGURE_DEPENDS "${_root}/csrc/cpu/*.cpp")
  add_library(${target} SHARED "${_root}/csrc/torch_bindings.cpp" ${_cpu_sources})
  add_library(moe_ext::ops ALIAS ${target})
  # The library registers ops only: the Python module entry point of the wheel is left out.
  target_compile_definitions(${target} PRIVATE MOE_EXT_NO_PYTHON)
  target_include_directories(
    ${target} PUBLIC "$<BUILD_INTERFACE:${_root}/csrc>" "$<BUILD_INTERFACE:${_root}/csrc/include>"
                     "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
  target_compile_features(${target} PUBLIC cxx_std_17)
  # `torch` rather than TORCH_LIBRARIES, which also names libnvrtc: not every CUDA install has it.
  target_link_libraries(${target} PUBLIC torch)
  # Programs reach the ops through the dispatcher and reference no symbol of the library, so an
  # --as-needed linker would drop it and its registrations with it.
  target_link_options(${target} INTERFACE "LINKER:--no-as-needed")
  set_target_properties(${target} PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)

  if(MOE_EXT_WITH_CUDA)
    if(NOT CMAKE_CUDA_COMPILER_LOADED)
      message(FATAL_ERROR "MOE_EXT_WITH_CUDA=ON needs a torch built with CUDA and nvcc "
                          "(CUDA_HOME, default /usr/local/cuda)")
    endif()
    file(GLOB _cuda_sources CONFIGURE_DEPENDS "${_root}/csrc/cuda/*.cu")
    target_sources(${target} PRIVATE ${_cuda_sources})
    target_compile_definitions(${target} PRIVATE MOE_EXT_WITH_CUDA)
    # ATen/cuda/CUDAContext.h includes cusparse.h, cublas_v2.h, ...: a compiler-only CUDA
    # install lacks them, torch's pip wheels ship them next to torch (as setup.py also finds).
    file(GLOB _cuda_library_includes "${TORCH_INSTALL_PREFIX}/../nvidia/cu*/include")
    target_include_directories(${target} SYSTEM PRIVATE ${_cuda_library_includes})
    # The flags torch's own extension builder (and so setup.py) compiles the kernels with.
    target_compile_options(
      ${target}
      PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo
              -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
              -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__>)
  endif()
endfunction()
