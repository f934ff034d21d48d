from geo_sat2map.cli import main

if __name__ == "__main__":
    main()
