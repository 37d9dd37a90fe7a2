# `cmake --install` lays out the library, the torch-free kernel headers and a CMake package:
#   find_package(moe_ext REQUIRED)   # finds Torch too (see moe_ext_torch.cmake)
#   target_link_libraries(app PRIVATE moe_ext::ops)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(_moe_ext_cmake_dir "${CMAKE_INSTALL_LIBDIR}/cmake/moe_ext")
set_target_properties(moe_ext_ops PROPERTIES EXPORT_NAME ops)
install(TARGETS moe_ext_ops EXPORT moe_extTargets LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
# The include folder is part of the target's interface: created even before any header exists.
install(DIRECTORY DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/csrc/include/moe_ext"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" OPTIONAL)
install(EXPORT moe_extTargets NAMESPACE moe_ext:: DESTINATION "${_moe_ext_cmake_dir}")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/moe_extConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/moe_extConfig.cmake" INSTALL_DESTINATION "${_moe_ext_cmake_dir}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/moe_extConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/moe_extConfig.cmake"
              "${PROJECT_BINARY_DIR}/moe_extConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/moe_ext_torch.cmake"
        DESTINATION "${_moe_ext_cmake_dir}")
