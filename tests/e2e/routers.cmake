# End-to-end router tests (dirmoe, probmoe): EP=N equals EP=1 with accumulation, metrics, bad
# config. Included from tests/e2e/CMakeLists.txt.
add_executable(test_e2e_routers ${CMAKE_CURRENT_LIST_DIR}/test_e2e_routers.cpp)
target_link_libraries(test_e2e_routers PRIVATE GTest::gtest_main nlohmann_json::nlohmann_json)
add_dependencies(test_e2e_routers dirmoe)
add_test(NAME test_e2e_routers COMMAND test_e2e_routers)
set_tests_properties(test_e2e_routers PROPERTIES TIMEOUT 900 PROCESSORS 2 ENVIRONMENT
  "${DIRMOE_MPI_ENV};DIRMOE_SOURCE_DIR=${CMAKE_SOURCE_DIR};DIRMOE_BIN=$<TARGET_FILE:dirmoe>;DIRMOE_MPIEXEC=${MPIEXEC_EXECUTABLE}")
